#include "ipc/fd_passing.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"

namespace picklejail::ipc {
namespace {

constexpr std::size_t kMaxFdsPerMessage = 16;

[[noreturn]] void socket_error(const char* what) {
    throw Error(ErrorCode::io_error, std::string(what) + ": " + std::strerror(errno));
}

}  // namespace

std::optional<ReceivedChunk> receive_with_fds(int socket, std::span<std::byte> buffer,
                                              std::size_t max_fds) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)]{};
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * std::min(max_fds, kMaxFdsPerMessage));
    if (max_fds == 0) msg.msg_controllen = 0;
    ssize_t n;
    do {
        n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
        if (errno == ECONNRESET) return ReceivedChunk{0, {}, true, false};
        socket_error("recvmsg");
    }
    ReceivedChunk chunk;
    chunk.size = static_cast<std::size_t>(n);
    chunk.closed = n == 0;
    chunk.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            chunk.fds.emplace_back(fd);
        }
    }
    return chunk;
}

std::size_t send_with_fd(int socket, std::span<const std::byte> bytes, int fd) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
    iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t n;
    do {
        n = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        socket_error("sendmsg");
    }
    return static_cast<std::size_t>(n);
}

void send_all(int socket, std::span<const std::byte> bytes, int fd) {
    while (!bytes.empty()) {
        const std::size_t sent = send_with_fd(socket, bytes, fd);
        if (sent == 0) throw Error(ErrorCode::io_error, "sendmsg: socket is non-blocking and full");
        bytes = bytes.subspan(sent);
        fd = -1;  // attached to the first byte only
    }
}

}  // namespace picklejail::ipc
