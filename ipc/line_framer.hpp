// Splits a byte stream into protocol lines and keeps each received file
// descriptor with the line whose bytes it arrived with. Pure bookkeeping:
// the daemon and the C++ client feed it what recvmsg returned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ipc/unique_fd.hpp"

namespace picklejail::ipc {

struct FramedLine {
    std::string text;  // without the trailing '\n'
    std::vector<UniqueFd> fds;
};

class LineFramer {
  public:
    // `max_line`: longest line including '\n'; `max_buffered`: most bytes
    // held while earlier lines wait to be taken.
    LineFramer(std::size_t max_line, std::size_t max_buffered)
        : max_line_(max_line), max_buffered_(max_buffered) {}

    // Adds received bytes; `fds` belong to the line holding the first byte.
    // Throws Error(invalid_request) once the unanswered bytes exceed the cap.
    void append(std::span<const std::byte> bytes, std::vector<UniqueFd> fds);

    // The next complete line, if any. Throws Error(invalid_request) when the
    // pending line grew past max_line without a '\n'.
    [[nodiscard]] std::optional<FramedLine> next_line();

    [[nodiscard]] std::size_t buffered() const noexcept { return buffer_.size(); }
    // True when a whole line is waiting to be taken.
    [[nodiscard]] bool has_complete_line() const noexcept {
        return buffer_.find('\n') != std::string::npos;
    }
    // Descriptors held for lines that have not been taken yet.
    [[nodiscard]] std::size_t pending_fds() const noexcept { return fds_.size(); }
    // Takes `count` raw bytes that follow a line (the inline transport).
    [[nodiscard]] std::string take_raw(std::size_t count);

  private:
    std::size_t max_line_;
    std::size_t max_buffered_;
    std::string buffer_;
    std::uint64_t consumed_ = 0;                          // stream offset of buffer_[0]
    std::deque<std::pair<std::uint64_t, UniqueFd>> fds_;  // stream offset → fd
};

}  // namespace picklejail::ipc
