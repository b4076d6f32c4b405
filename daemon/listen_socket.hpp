// The listening socket: handed over by systemd (socket activation through
// LISTEN_FDS) or bound by us at the configured path; plus readiness
// notifications to systemd (a no-op without NOTIFY_SOCKET).
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

struct ListenSocket {
    ipc::UniqueFd fd;
    bool from_systemd = false;
    std::filesystem::path bound_path;  // ours to unlink at exit; empty for systemd's
};

// systemd's socket when LISTEN_FDS names exactly one Unix stream socket,
// else a new one bound at `path` with `mode` (a stale socket file there is
// replaced; anything else there is an error). Throws Error(io_error).
[[nodiscard]] ListenSocket open_listen_socket(const std::filesystem::path& path, mode_t mode);

// sd_notify wrappers: READY=1, RELOADING=1, STOPPING=1, STATUS=...
void notify_systemd(const std::string& state);

}  // namespace picklejail::daemon
