// Exactly one audit line per request line a client sends: created when the
// line is framed, filled in as the request goes, written when its reply has
// been delivered (or failed to be). A request that ends any other way — the
// client left, the daemon stopped — is written as "cancelled" when its
// record is dropped, so no request goes unlogged or is logged twice.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string_view>

#include "common/error.hpp"
#include "daemon/audit_log.hpp"
#include "ipc/peer_credentials.hpp"

namespace picklejail::daemon {

class RequestAudit {
  public:
    RequestAudit(AuditLog log, const ipc::PeerCredentials& peer);
    RequestAudit(const RequestAudit&) = delete;
    RequestAudit& operator=(const RequestAudit&) = delete;
    ~RequestAudit();

    // Fields describing the request (op, path, policy, file, worker pid, …).
    [[nodiscard]] nlohmann::json& fields() noexcept { return entry_; }
    // Writes the line with `code` as the result; later calls do nothing.
    void finish(ErrorCode code, std::string_view message);
    // Writes the line with result "cancelled" (the reply never reached the client).
    void cancel(std::string_view why);
    [[nodiscard]] bool written() const noexcept { return written_; }

  private:
    void write(std::string_view result);

    AuditLog log_;
    nlohmann::json entry_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
    bool written_ = false;
};

}  // namespace picklejail::daemon
