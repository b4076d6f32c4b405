// Turning a finished, checked image into the reply its request asked for:
// the memfd itself, its bytes inline, a named shm copy, or (inspect) a
// summary of its header. The shm copy and the summary are built on the
// compute pool; the event loop only hands fds and mappings around.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <variant>

#include "daemon/reply.hpp"
#include "daemon/services.hpp"
#include "ipc/peer_credentials.hpp"
#include "ipc/protocol.hpp"

namespace picklejail::daemon {

struct FinishedImage {
    ipc::UniqueFd fd;  // sealed memfd
    std::uint64_t size = 0;
    std::uint64_t tensors = 0;
    std::string format;
    bool cached = false;
};

// Builds the reply for `request` and passes it to `done` (on the event loop,
// possibly before returning). Failures arrive as an error reply.
void build_image_reply(Services& services, const ipc::PeerCredentials& peer,
                       const ipc::Request& request, const std::string& policy, FinishedImage image,
                       const std::function<void(Reply)>& done);

}  // namespace picklejail::daemon
