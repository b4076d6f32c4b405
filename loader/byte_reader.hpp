// A bounds-checked cursor over bytes already in memory. Every read either
// succeeds completely or throws `malformed` naming what was being read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace picklejail::loader {

class ByteReader {
  public:
    // `base` is added to positions in messages (the reader may view a slice);
    // `end` names where the slice ends, for messages.
    explicit ByteReader(std::span<const std::byte> bytes, std::size_t base = 0,
                        std::string_view end = "the data")
        : bytes_(bytes), base_(base), end_(end) {}

    [[nodiscard]] std::size_t position() const noexcept { return pos_; }
    [[nodiscard]] std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
    [[nodiscard]] bool at_end() const noexcept { return pos_ == bytes_.size(); }

    [[nodiscard]] std::span<const std::byte> take(std::uint64_t count, std::string_view what) {
        if (count > remaining()) {
            throw Error(ErrorCode::malformed, std::string(what) + " runs past the end of " +
                                                  std::string(end_) + " (offset " +
                                                  std::to_string(base_ + pos_) + ", needs " +
                                                  std::to_string(count) + " bytes, " +
                                                  std::to_string(remaining()) + " left)");
        }
        auto out = bytes_.subspan(pos_, static_cast<std::size_t>(count));
        pos_ += static_cast<std::size_t>(count);
        return out;
    }

    [[nodiscard]] std::uint8_t u8(std::string_view what) {
        return std::to_integer<std::uint8_t>(take(1, what)[0]);
    }

    // Little-endian unsigned of N bytes (N <= 8).
    template <std::size_t N>
    [[nodiscard]] std::uint64_t le(std::string_view what) {
        static_assert(N <= 8);
        auto raw = take(N, what);
        std::uint64_t value = 0;
        for (std::size_t i = 0; i < N; ++i) {
            value |= std::uint64_t{std::to_integer<std::uint8_t>(raw[i])} << (8 * i);
        }
        return value;
    }

    [[nodiscard]] std::string_view chars(std::uint64_t count, std::string_view what) {
        auto raw = take(count, what);
        return {reinterpret_cast<const char*>(raw.data()), raw.size()};
    }

    // Reads up to and excluding '\n' (protocol-0 text operands), at most max_len.
    [[nodiscard]] std::string_view line(std::size_t max_len, std::string_view what) {
        const std::size_t limit = std::min(remaining(), max_len + 1);
        const auto* start = reinterpret_cast<const char*>(bytes_.data() + pos_);
        const void* nl = std::memchr(start, '\n', limit);
        if (nl == nullptr) {
            throw Error(ErrorCode::malformed,
                        std::string(what) + " at offset " + std::to_string(base_ + pos_) +
                            " has no terminating newline before the end of " + std::string(end_));
        }
        const auto len = static_cast<std::size_t>(static_cast<const char*>(nl) - start);
        pos_ += len + 1;
        return {start, len};
    }

  private:
    std::span<const std::byte> bytes_;
    std::size_t base_ = 0;
    std::string_view end_;
    std::size_t pos_ = 0;
};

}  // namespace picklejail::loader
