#include "ipc/result_record.hpp"

#include <algorithm>
#include <cstring>

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
    const auto* s = reinterpret_cast<const unsigned char*>(raw.data());
    const std::size_t n = raw.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned char c = s[i];
        if (c < 0x80) {
            out.push_back(c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c));
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t cp = 0;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1FU;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0FU;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07U;
        }
        bool valid = len != 0 && i + len <= n;
        for (std::size_t k = 1; valid && k < len; ++k) {
            valid = (s[i + k] & 0xC0) == 0x80;
            cp = (cp << 6) | (s[i + k] & 0x3FU);
        }
        valid = valid && !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) &&
                !(len == 4 && cp < 0x10000) && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF) &&
                !(cp >= 0x80 && cp < 0xA0);
        if (!valid) {
            out.push_back('?');
            ++i;
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
