#include "daemon/request_audit.hpp"

#include "ipc/protocol.hpp"

namespace picklejail::daemon {

RequestAudit::RequestAudit(AuditLog log, const ipc::PeerCredentials& peer)
    : log_(log),
      entry_{{"event", "request"}, {"op", nullptr}, {"uid", peer.uid}, {"pid", peer.pid}} {}

RequestAudit::~RequestAudit() {
    if (!written_) {
        try {
            cancel("the request ended before its reply was delivered");
        } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
        }
    }
}

void RequestAudit::finish(ErrorCode code, std::string_view message) {
    if (written_) return;
    if (code != ErrorCode::ok) {
        entry_["message"] = message;
        const auto global = ipc::named_global(message);
        entry_["globals_refused"] =
            global.empty() ? nlohmann::json::array() : nlohmann::json::array({global});
    }
    write(to_string(code));
}

void RequestAudit::cancel(std::string_view why) {
    if (written_) return;
    entry_["message"] = why;
    write("cancelled");
}

void RequestAudit::write(std::string_view result) {
    written_ = true;
    entry_["result"] = result;
    entry_["duration_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::steady_clock::now() - start_)
                                .count();
    log_.record(entry_);
}

}  // namespace picklejail::daemon
