#include "daemon/listen_socket.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"

namespace picklejail::daemon {
namespace {

constexpr int kBacklog = 256;

[[noreturn]] void fail(const std::string& what) {
    throw Error(ErrorCode::io_error, what + ": " + std::strerror(errno));
}

// A socket file left by a daemon that died may be replaced; a live daemon
// answering there, or any other kind of file, may not.
void remove_stale_socket(const std::filesystem::path& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;
    if (!S_ISSOCK(st.st_mode))
        throw Error(ErrorCode::io_error, path.string() + " exists and is not a socket");
    ipc::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0)
        throw Error(ErrorCode::io_error, "another daemon is already listening on " + path.string());
    if (::unlink(path.c_str()) != 0) fail("unlink " + path.string());
}

}  // namespace

ListenSocket open_listen_socket(const std::filesystem::path& path, mode_t mode) {
    ListenSocket out;
    if (::sd_listen_fds(1) == 1 &&
        ::sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) > 0) {
        out.fd.reset(SD_LISTEN_FDS_START);
        out.from_systemd = true;
        return out;
    }
    // Bound and made ready under a temporary name, then renamed into place:
    // once `path` exists it has its mode and accepts connections, so whoever
    // waits for the file (a test, a script) never connects between bind and
    // listen and is refused.
    const std::filesystem::path staging = path.string() + "." + std::to_string(::getpid()) + ".tmp";
    if (staging.string().size() >= sizeof(sockaddr_un::sun_path))
        throw Error(ErrorCode::io_error, "socket path too long: " + path.string());
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    remove_stale_socket(path);
    out.fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!out.fd) fail("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, staging.c_str(), sizeof address.sun_path - 1);
    (void)::unlink(staging.c_str());  // left by a daemon with this pid that died here
    if (::bind(out.fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        fail("bind " + staging.string());
    if (::chmod(staging.c_str(), mode) != 0 || ::listen(out.fd.get(), kBacklog) != 0 ||
        ::rename(staging.c_str(), path.c_str()) != 0) {
        const int error = errno;
        (void)::unlink(staging.c_str());
        errno = error;
        fail("listen on " + path.string());
    }
    out.bound_path = path;
    return out;
}

void notify_systemd(const std::string& state) {
    (void)::sd_notify(0, state.c_str());
}

}  // namespace picklejail::daemon
