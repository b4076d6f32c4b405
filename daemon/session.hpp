// One client connection: reads request lines (with any attached fd), runs
// them one at a time through the request handler, writes each reply, and
// cancels the job in flight if the client goes away.
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <functional>
#include <memory>
#include <string>

#include "daemon/request_handler.hpp"
#include "daemon/services.hpp"
#include "ipc/line_framer.hpp"
#include "ipc/peer_credentials.hpp"

namespace picklejail::daemon {

class Session : public std::enable_shared_from_this<Session> {
  public:
    using Socket = boost::asio::local::stream_protocol::socket;
    Session(Services& services, Socket socket, std::function<void(Session*)> on_closed);
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
    void process_next();
    void dispatch(ipc::FramedLine line);
    void send(Reply reply);
    void write_line();
    void write_payload();
    void on_reply_sent();
    void fail_and_close(ErrorCode code, const std::string& message);
    void close();

    Services& services_;
    Socket socket_;
    std::function<void(Session*)> on_closed_;
    ipc::PeerCredentials peer_;
    ipc::LineFramer framer_;
    std::shared_ptr<PendingRequest> job_;
    bool in_request_ = false;
    bool closing_when_idle_ = false;
    bool closed_ = false;
    bool peer_gone_ = false;
    // The reply being written.
    std::string out_line_;
    std::size_t out_sent_ = 0;
    ipc::UniqueFd out_fd_;
    ipc::Mapping out_payload_;
    bool out_close_after_ = false;
};

}  // namespace picklejail::daemon
