// A load or inspect from admission to its reply. The input is opened (as the
// caller, off the event loop) and identified; the image then comes from the
// cache, from a conversion of the same file already in flight, or from a new
// worker job; finally it becomes the reply its transport asks for
// (daemon/image_reply.hpp). Cancelling at any step stops what runs and
// suppresses the reply.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "daemon/reply.hpp"
#include "daemon/request_audit.hpp"
#include "daemon/services.hpp"
#include "ipc/peer_credentials.hpp"
#include "ipc/protocol.hpp"

namespace picklejail::daemon {

using ReplyHandler = std::function<void(Reply)>;

// Starts a load or inspect. Refusals that need no I/O (draining, unknown
// policy, a bad fd count, shm quota) throw Error; everything later arrives
// through `reply`, from a later handler.
[[nodiscard]] std::shared_ptr<PendingRequest> start_load(
    Services& services, const ipc::PeerCredentials& peer, ipc::Request request,
    std::vector<ipc::UniqueFd> fds, std::shared_ptr<RequestAudit> audit, ReplyHandler reply);

}  // namespace picklejail::daemon
