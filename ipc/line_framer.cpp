#include "ipc/line_framer.hpp"

#include <algorithm>

#include "common/error.hpp"

namespace picklejail::ipc {

void LineFramer::append(std::span<const std::byte> bytes, std::vector<UniqueFd> fds) {
    const std::uint64_t offset = consumed_ + buffer_.size();
    for (auto& fd : fds) fds_.emplace_back(offset, std::move(fd));
    if (bytes.size() > max_buffered_ - std::min(max_buffered_, buffer_.size())) {
        throw Error(ErrorCode::invalid_request,
                    "more than " + std::to_string(max_buffered_) +
                        " bytes of requests arrived before their replies were read");
    }
    buffer_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::optional<FramedLine> LineFramer::next_line() {
    const auto newline = buffer_.find('\n');
    if (newline == std::string::npos) {
        if (buffer_.size() >= max_line_) {
            throw Error(ErrorCode::invalid_request,
                        "request line longer than " + std::to_string(max_line_) + " bytes");
        }
        return std::nullopt;
    }
    if (newline + 1 > max_line_) {
        throw Error(ErrorCode::invalid_request,
                    "request line longer than " + std::to_string(max_line_) + " bytes");
    }
    FramedLine line;
    line.text = buffer_.substr(0, newline);
    const std::uint64_t end = consumed_ + newline + 1;
    while (!fds_.empty() && fds_.front().first < end) {
        line.fds.push_back(std::move(fds_.front().second));
        fds_.pop_front();
    }
    buffer_.erase(0, newline + 1);
    consumed_ = end;
    return line;
}

std::string LineFramer::take_raw(std::size_t count) {
    count = std::min(count, buffer_.size());
    std::string raw = buffer_.substr(0, count);
    buffer_.erase(0, count);
    consumed_ += count;
    while (!fds_.empty() && fds_.front().first < consumed_) fds_.pop_front();
    return raw;
}

}  // namespace picklejail::ipc
