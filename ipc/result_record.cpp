#include "ipc/result_record.hpp"

#include <algorithm>
#include <cstring>

namespace picklejail::ipc {

ResultRecord make_result(ErrorCode status, std::string_view message, std::uint64_t output_size,
                         std::uint64_t tensor_count) {
    ResultRecord record;
    record.status = static_cast<std::uint8_t>(status);
    const std::size_t length = std::min(message.size(), kResultMessageBytes);
    std::memcpy(record.message.data(), message.data(), length);
    record.message_length = static_cast<std::uint32_t>(length);
    record.output_size = output_size;
    record.tensor_count = tensor_count;
    return record;
}

std::optional<DecodedResult> decode_result(std::span<const std::byte> bytes) {
    ResultRecord record;
    if (bytes.size() != sizeof record) return std::nullopt;
    std::memcpy(&record, bytes.data(), sizeof record);
    if (record.magic != kResultMagic) return std::nullopt;
    if (record.status > static_cast<std::uint8_t>(ErrorCode::internal)) return std::nullopt;
    if (record.message_length > kResultMessageBytes) return std::nullopt;
    std::string message(record.message.data(), record.message_length);
    for (char& c : message) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    }
    return DecodedResult{static_cast<ErrorCode>(record.status),
                         std::move(message),
                         record.syscall,
                         record.output_size,
                         record.tensor_count,
                         record.peak_rss_kib};
}

}  // namespace picklejail::ipc
