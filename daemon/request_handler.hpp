// What each protocol op does. Sessions own framing, the socket and the audit
// line; this file routes a parsed request to its op: ping, stats and release
// answer at once, load and inspect go through daemon/load_request.hpp.
#pragma once

#include <memory>
#include <vector>

#include "daemon/load_request.hpp"
#include "daemon/request_audit.hpp"
#include "daemon/services.hpp"
#include "ipc/peer_credentials.hpp"
#include "ipc/protocol.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

// Handles one parsed request. Immediate ops (and refusals that need no I/O)
// call `reply` before returning and return nullptr; load and inspect return
// the pending request, which the session cancels if the client goes away.
[[nodiscard]] std::shared_ptr<PendingRequest> handle_request(
    Services& services, const ipc::PeerCredentials& peer, ipc::Request request,
    std::vector<ipc::UniqueFd> fds, const std::shared_ptr<RequestAudit>& audit,
    const ReplyHandler& reply);

}  // namespace picklejail::daemon
