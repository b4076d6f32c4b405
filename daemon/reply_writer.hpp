// The write side of a session: one reply at a time — its line (with an fd on
// the first byte), then its raw payload — on a non-blocking socket. Every
// pending operation holds the reply it reads from, so nothing a write still
// reads is freed or replaced, whatever the client does meanwhile. A reply
// that makes no progress for `stall_timeout` (a client that stopped reading)
// ends undelivered and the session closes the connection.
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>

#include "daemon/reply.hpp"

namespace picklejail::daemon {

class ReplyWriter : public std::enable_shared_from_this<ReplyWriter> {
  public:
    using Socket = boost::asio::local::stream_protocol::socket;
    using Finished = std::function<void(bool delivered)>;

    // `socket` must outlive every operation: `owner` (passed to write) is
    // held by each pending handler for that reason.
    ReplyWriter(Socket& socket, std::chrono::milliseconds stall_timeout);

    // Starts writing `reply`; `finished` runs once (before write() returns
    // when the socket took everything at once) with true when every byte
    // left, false on an error, a stall or abandon().
    void write(std::shared_ptr<Reply> reply, std::shared_ptr<void> owner, Finished finished);
    // Ends the reply in progress as undelivered. Pending operations complete
    // later (cancelled by the owner closing the socket) and only then let go
    // of the reply's bytes.
    void abandon();
    [[nodiscard]] bool busy() const noexcept { return reply_ != nullptr; }

  private:
    void send_line();
    void send_payload();
    void progressed();
    void end(bool delivered);

    Socket& socket_;
    std::chrono::milliseconds stall_timeout_;
    boost::asio::steady_timer stall_timer_;
    std::shared_ptr<Reply> reply_;
    std::shared_ptr<void> owner_;
    Finished finished_;
    std::size_t line_sent_ = 0;
    std::size_t payload_sent_ = 0;
    std::uint64_t generation_ = 0;  // tells a stale handler from the current reply's
};

}  // namespace picklejail::daemon
