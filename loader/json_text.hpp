// Appending JSON text to a string, for the two large JSON texts a conversion
// writes (the object description and the safetensors header). Building them
// as nlohmann trees cost several allocations per tensor; the text is the same.
#pragma once

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace picklejail::loader {

// `text` as a JSON string literal, escaped exactly as nlohmann::json's dump()
// escapes it. Invalid UTF-8 is Error(malformed).
void append_json_string(std::string& out, std::string_view text);

// A double as nlohmann::json writes it (shortest text that reads back the same).
void append_json_double(std::string& out, double value);

template <typename Integer>
void append_json_integer(std::string& out, Integer value) {
    char digits[24];
    const auto result = std::to_chars(digits, digits + sizeof digits, value);
    out.append(digits, result.ptr);
}

}  // namespace picklejail::loader
