// Overflow-safe arithmetic for every length, count, offset and stride that
// comes from a file: each helper throws instead of wrapping.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/error.hpp"

namespace picklejail::loader {

[[noreturn]] inline void throw_overflow(std::string_view what) {
    throw Error(ErrorCode::malformed, std::string(what) + ": integer overflow");
}

[[nodiscard]] inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b,
                                               std::string_view what) {
    std::uint64_t out = 0;
    if (__builtin_add_overflow(a, b, &out)) throw_overflow(what);
    return out;
}

[[nodiscard]] inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b,
                                               std::string_view what) {
    std::uint64_t out = 0;
    if (__builtin_mul_overflow(a, b, &out)) throw_overflow(what);
    return out;
}

}  // namespace picklejail::loader
