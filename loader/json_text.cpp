#include "loader/json_text.hpp"

#include <nlohmann/json.hpp>

namespace picklejail::loader {
namespace {

// Plain ASCII without quotes, backslashes or control characters is its own
// JSON text; anything else goes through nlohmann's serializer.
bool needs_escaping(std::string_view text) noexcept {
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20 || byte >= 0x80 || c == '"' || c == '\\') return true;
    }
    return false;
}

}  // namespace

void append_json_string(std::string& out, std::string_view text) {
    if (needs_escaping(text)) {
        out += nlohmann::json(text).dump();
        return;
    }
    out.push_back('"');
    out.append(text);
    out.push_back('"');
}

void append_json_double(std::string& out, double value) {
    out += nlohmann::json(value).dump();
}

}  // namespace picklejail::loader
