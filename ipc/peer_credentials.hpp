// Who is on the other end of a Unix socket, as the kernel says: the only
// source of identity the daemon trusts.
#pragma once

#include <sys/types.h>

#include <vector>

namespace picklejail::ipc {

struct PeerCredentials {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
};

// SO_PEERCRED and SO_PEERGROUPS. Throws Error(io_error).
[[nodiscard]] PeerCredentials peer_credentials(int socket);

}  // namespace picklejail::ipc
