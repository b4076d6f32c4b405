// Sending and receiving bytes with file descriptors attached (SCM_RIGHTS) on
// a Unix stream socket. Both work on blocking and non-blocking sockets.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "ipc/unique_fd.hpp"

namespace picklejail::ipc {

struct ReceivedChunk {
    std::size_t size = 0;        // bytes placed in the buffer; 0 with `closed` at end of stream
    std::vector<UniqueFd> fds;   // descriptors that arrived with these bytes
    bool closed = false;         // the peer shut down its side
    bool fds_truncated = false;  // the peer sent more descriptors than we accept
};

// One recvmsg. Returns nullopt when a non-blocking socket has nothing to
// read. Received descriptors are close-on-exec. Throws Error(io_error).
[[nodiscard]] std::optional<ReceivedChunk> receive_with_fds(int socket, std::span<std::byte> buffer,
                                                            std::size_t max_fds);

// One sendmsg; `fd` (when >= 0) rides on the first byte. Returns the number
// of bytes sent, 0 when a non-blocking socket is full. Never raises SIGPIPE.
// Throws Error(io_error).
[[nodiscard]] std::size_t send_with_fd(int socket, std::span<const std::byte> bytes, int fd);

// Blocking helpers for clients: the whole buffer, retrying short writes.
void send_all(int socket, std::span<const std::byte> bytes, int fd = -1);

}  // namespace picklejail::ipc
