#include "daemon/request_handler.hpp"

#include "daemon/stats_report.hpp"
#include "version.hpp"

namespace picklejail::daemon {

std::shared_ptr<PendingRequest> handle_request(Services& services, const ipc::PeerCredentials& peer,
                                               ipc::Request request, std::vector<ipc::UniqueFd> fds,
                                               const std::shared_ptr<RequestAudit>& audit,
                                               const ReplyHandler& reply) {
    services.stats.count_request(ipc::to_string(request.op));
    auto& fields = audit->fields();
    fields["op"] = ipc::to_string(request.op);
    if (request.path) fields["path"] = *request.path;
    const nlohmann::json id = request.id;
    try {
        // An fd on a line that does not ask for one is closed, and the request refused.
        if (!fds.empty() && request.op != ipc::Op::load && request.op != ipc::Op::inspect)
            throw Error(ErrorCode::invalid_request,
                        "a " + std::string(ipc::to_string(request.op)) + " request carries no fd");
        switch (request.op) {
            case ipc::Op::ping:
                reply(Reply::ok({{"version", kVersion}, {"protocol", ipc::kProtocolVersion}}, id));
                return nullptr;
            case ipc::Op::stats:
                reply(Reply::ok({{"stats", stats_report(services)}}, id));
                return nullptr;
            case ipc::Op::release:
                fields["shm_name"] = request.shm_name;
                services.shm.release(peer.uid, request.shm_name);
                reply(Reply::ok(nlohmann::json::object(), id));
                return nullptr;
            case ipc::Op::load:
            case ipc::Op::inspect:
                return start_load(services, peer, std::move(request), std::move(fds), audit, reply);
        }
    } catch (const Error& e) {
        reply(Reply::error(e.code(), e.what(), id));
    } catch (const std::exception& e) {
        reply(Reply::error(ErrorCode::internal, e.what(), id));
    }
    return nullptr;
}

}  // namespace picklejail::daemon
