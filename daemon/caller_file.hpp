// Opening a client-named path with the client's own credentials, and the
// identity of a file (for the audit log and the cache key).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "ipc/peer_credentials.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

struct FileIdentity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t ctime_ns = 0;
    friend bool operator==(const FileIdentity&, const FileIdentity&) = default;
    // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads defaulted <=>
    friend auto operator<=>(const FileIdentity&, const FileIdentity&) = default;
};

// Opens `path` read-only as the caller: as root, with the caller's fsuid,
// fsgid and groups on this thread only; unprivileged, only for callers of
// our own uid. Never follows into a FIFO or device (O_NONBLOCK, then a
// regular-file check). Throws Error(denied | io_error).
[[nodiscard]] ipc::UniqueFd open_as_caller(const std::string& path,
                                           const ipc::PeerCredentials& caller);

// Checks that a received fd is a regular file opened for reading and
// returns its identity. Throws Error(denied | io_error).
[[nodiscard]] FileIdentity readable_file_identity(int fd);

[[nodiscard]] nlohmann::json to_json(const FileIdentity& identity);

}  // namespace picklejail::daemon
