// The fixed binary record a worker writes on fd 5. The parent treats it as
// untrusted: every field is range-checked and the message is sanitised
// before anyone prints it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "common/error.hpp"

namespace picklejail::ipc {

inline constexpr std::uint32_t kResultMagic = 0x504a5231;  // "PJR1"
inline constexpr std::size_t kResultMessageBytes = 3072;

struct ResultRecord {
    std::uint32_t magic = kResultMagic;
    std::uint8_t status = 0;  // ErrorCode
    std::uint8_t reserved[3] = {};
    std::int32_t syscall = -1;  // the refused syscall, for sandbox_violation
    std::uint32_t message_length = 0;
    std::uint64_t output_size = 0;  // bytes of safetensors image written to fd 4
    std::uint64_t tensor_count = 0;
    std::uint64_t peak_rss_kib = 0;
    std::array<char, kResultMessageBytes> message{};
};
static_assert(sizeof(ResultRecord) <= 4096, "one atomic pipe write (PIPE_BUF)");

// Fills a record; the message is truncated to fit.
[[nodiscard]] ResultRecord make_result(ErrorCode status, std::string_view message,
                                       std::uint64_t output_size = 0,
                                       std::uint64_t tensor_count = 0);

struct DecodedResult {
    ErrorCode status;
    std::string message;  // printable ASCII/UTF-8 only, control characters replaced
    std::int32_t syscall;
    std::uint64_t output_size;
    std::uint64_t tensor_count;
    std::uint64_t peak_rss_kib;
};

// Parses exactly one record; nullopt when the bytes are not one valid record.
[[nodiscard]] std::optional<DecodedResult> decode_result(std::span<const std::byte> bytes);

}  // namespace picklejail::ipc
