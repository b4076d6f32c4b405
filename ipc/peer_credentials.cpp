#include "ipc/peer_credentials.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"

namespace picklejail::ipc {

PeerCredentials peer_credentials(int socket) {
    ucred cred{};
    socklen_t length = sizeof cred;
    if (::getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
        throw Error(ErrorCode::io_error, std::string("SO_PEERCRED: ") + std::strerror(errno));
    }
    PeerCredentials peer{cred.pid, cred.uid, cred.gid, {}};
    std::vector<gid_t> groups(64);
    for (;;) {
        length = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(socket, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &length) == 0) break;
        // ERANGE reports the size needed; the kernel caps groups at 65536.
        if (errno != ERANGE || groups.size() >= 65536) {
            throw Error(ErrorCode::io_error, std::string("SO_PEERGROUPS: ") + std::strerror(errno));
        }
        groups.resize(length / sizeof(gid_t) + 1);
    }
    groups.resize(length / sizeof(gid_t));
    peer.groups = std::move(groups);
    return peer;
}

}  // namespace picklejail::ipc
