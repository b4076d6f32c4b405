// One client connection. The read side frames request lines (each with at
// most one attached fd), bounds what a client may hold — unanswered bytes,
// pending fds, an unfinished line's age — and runs one request at a time;
// the write side (daemon/reply_writer.hpp) delivers each reply. A request
// whose client goes away is cancelled and its worker killed. Every request
// line gets exactly one audit line (daemon/request_audit.hpp).
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>

#include "daemon/reply_writer.hpp"
#include "daemon/request_audit.hpp"
#include "daemon/request_handler.hpp"
#include "daemon/services.hpp"
#include "daemon/uid_accounts.hpp"
#include "ipc/line_framer.hpp"
#include "ipc/peer_credentials.hpp"

namespace picklejail::daemon {

class Session : public std::enable_shared_from_this<Session> {
  public:
    using Socket = boost::asio::local::stream_protocol::socket;
    Session(Services& services, Socket socket, ipc::PeerCredentials peer,
            UidAccounts::Share connection, std::function<void(Session*)> on_closed);
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    void start();
    // Draining: finish the request in flight (if any), then close.
    void close_when_idle();
    // Closes now, killing the worker of a request in flight.
    void abort() { close(); }
    [[nodiscard]] bool in_request() const noexcept { return in_request_; }

  private:
    void wait_readable();
    void on_readable();
    void watch_unfinished_line();
    void process_next();
    void dispatch(ipc::FramedLine line);
    void send(Reply reply);
    void reply_finished(const std::shared_ptr<RequestAudit>& audit, const Reply& reply,
                        bool delivered);
    void fail_and_close(ErrorCode code, const std::string& message);
    void close();

    Services& services_;
    Socket socket_;
    ipc::PeerCredentials peer_;
    UidAccounts::Share connection_;
    std::function<void(Session*)> on_closed_;
    ipc::LineFramer framer_;
    std::shared_ptr<ReplyWriter> writer_;
    boost::asio::steady_timer line_timer_;
    bool line_timer_armed_ = false;
    std::shared_ptr<PendingRequest> job_;
    std::shared_ptr<RequestAudit> audit_;  // the request being handled
    UidAccounts::Share reply_charge_;      // the reply being written
    bool in_request_ = false;
    bool awaiting_reply_ = false;
    bool waiting_for_budget_ = false;
    bool reading_stopped_ = false;
    bool closing_when_idle_ = false;
    bool closed_ = false;
};

}  // namespace picklejail::daemon
