#include "ipc/result_record.hpp"

#include <algorithm>
#include <cstring>

#include "common/utf8.hpp"

namespace picklejail::ipc {
namespace {

// The worker's message may quote bytes from the file (names, keys). Keep valid
// UTF-8 only and replace every control character (C0, DEL, C1) and every byte
// of an invalid, overlong or surrogate sequence with '?', so the text is safe
// for a terminal, a log line and a JSON reply (nlohmann::json::dump throws on
// invalid UTF-8).
std::string printable_message(std::string_view raw) {
    std::string out;
    out.reserve(raw.size());
    std::uint32_t codepoint = 0;
    for (std::size_t i = 0; i < raw.size();) {
        const std::size_t len = utf8_sequence(raw, i, codepoint);
        const bool control = codepoint < 0x20 || (codepoint >= 0x7f && codepoint < 0xA0);
        if (len == 0 || control) {
            out.push_back('?');
            ++i;  // one '?' per byte, as for any other byte we cannot show
            continue;
        }
        out.append(raw.substr(i, len));
        i += len;
    }
    return out;
}

}  // namespace

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
    std::string message =
        printable_message(std::string_view(record.message.data(), record.message_length));
    return DecodedResult{static_cast<ErrorCode>(record.status),
                         std::move(message),
                         record.syscall,
                         record.output_size,
                         record.tensor_count,
                         record.peak_rss_kib};
}

}  // namespace picklejail::ipc
