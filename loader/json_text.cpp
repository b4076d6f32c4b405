#include "loader/json_text.hpp"

#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/utf8.hpp"

namespace picklejail::loader {
namespace {

// Text whose only characters needing escapes are '"' and '\\' (no control
// characters) and that is valid UTF-8: escaping it is a copy with a backslash
// before those two. Anything else goes through nlohmann's serializer.
bool simple_to_escape(std::string_view text) noexcept {
    std::uint32_t codepoint = 0;
    for (std::size_t at = 0; at < text.size();) {
        const auto byte = static_cast<unsigned char>(text[at]);
        if (byte < 0x20) return false;
        if (byte < 0x80) {
            ++at;
            continue;
        }
        const std::size_t length = utf8_sequence(text, at, codepoint);
        if (length == 0) return false;
        at += length;
    }
    return true;
}

}  // namespace

void append_json_string(std::string& out, std::string_view text) {
    if (!simple_to_escape(text)) {
        try {
            out += nlohmann::json(text).dump();
        } catch (const nlohmann::json::type_error&) {
            // Every string from a file is checked when it is read; this is the
            // backstop that keeps a missed one a refusal, not a crashed worker.
            throw Error(ErrorCode::malformed, "text that is not valid UTF-8 reached the output");
        }
        return;
    }
    out.push_back('"');
    for (std::size_t start = 0; start < text.size();) {
        const std::size_t special = text.find_first_of("\"\\", start);
        const std::size_t end = special == std::string_view::npos ? text.size() : special;
        out.append(text.substr(start, end - start));
        if (end == text.size()) break;
        out.push_back('\\');
        out.push_back(text[end]);
        start = end + 1;
    }
    out.push_back('"');
}

void append_json_double(std::string& out, double value) {
    out += nlohmann::json(value).dump();
}

}  // namespace picklejail::loader
