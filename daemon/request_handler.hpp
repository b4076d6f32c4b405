// What each protocol op does. Sessions own framing and the socket; this file
// owns the meaning of a request: where the input comes from, which limits
// apply, how the worker is asked, and what the reply holds.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "daemon/services.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/peer_credentials.hpp"
#include "ipc/protocol.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

struct Reply {
    Reply() = default;  // NOLINT(bugprone-exception-escape): json default-constructs to null
    explicit Reply(nlohmann::json m) : message(std::move(m)) {}
    nlohmann::json message;
    ipc::UniqueFd fd;      // attached with SCM_RIGHTS (memfd transport)
    ipc::Mapping payload;  // raw bytes after the line (inline transport)
    bool close_after = false;
};

using ReplyHandler = std::function<void(Reply)>;

// Handles one parsed request. Immediate ops call `reply` before returning;
// load/inspect return the job, which the session cancels if the client goes
// away, and call `reply` when the worker is done.
[[nodiscard]] std::shared_ptr<PendingRequest> handle_request(Services& services,
                                                             const ipc::PeerCredentials& peer,
                                                             ipc::Request request,
                                                             std::vector<ipc::UniqueFd> fds,
                                                             const ReplyHandler& reply);

}  // namespace picklejail::daemon
