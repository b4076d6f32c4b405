// Decoding one UTF-8 sequence with the strict rules (no overlong forms,
// no surrogates, nothing above U+10FFFF), shared by the pickle VM and the
// safetensors checker, which refuse bad text, the JSON text writer, and the
// result record, which replaces it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace picklejail {

// The length (1–4) of the well-formed sequence starting at text[at], with
// its code point in `codepoint`; 0 when the bytes there are not one.
[[nodiscard]] inline std::size_t utf8_sequence(std::string_view text, std::size_t at,
                                               std::uint32_t& codepoint) noexcept {
    const auto byte = [&text](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned char c = byte(at);
    std::size_t len = 0;
    if (c < 0x80) {
        codepoint = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        codepoint = c & 0x1FU;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        codepoint = c & 0x0FU;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        codepoint = c & 0x07U;
    } else {
        return 0;
    }
    if (len > text.size() - at) return 0;
    for (std::size_t k = 1; k < len; ++k) {
        if ((byte(at + k) & 0xC0) != 0x80) return 0;
        codepoint = (codepoint << 6) | (byte(at + k) & 0x3FU);
    }
    const bool overlong = (len == 2 && codepoint < 0x80) || (len == 3 && codepoint < 0x800) ||
                          (len == 4 && codepoint < 0x10000);
    if (overlong || codepoint > 0x10FFFF || (codepoint >= 0xD800 && codepoint <= 0xDFFF)) return 0;
    return len;
}

}  // namespace picklejail
