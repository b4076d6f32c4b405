#include "daemon/session.hpp"

#include <boost/asio/post.hpp>

#include "ipc/fd_passing.hpp"
#include "ipc/protocol.hpp"

namespace picklejail::daemon {
namespace {

// Unanswered bytes a client may send ahead: one full line plus change.
constexpr std::size_t kMaxBuffered = 2 * ipc::kMaxLineBytes;
constexpr std::size_t kReadChunk = std::size_t{16} * 1024;
// A request carries at most one fd; a few pipelined requests may each carry
// theirs. Any more, before their lines end, is a flood of the fd table.
constexpr std::size_t kMaxFdsPerMessage = 1;
constexpr std::size_t kMaxPendingFds = 4;

}  // namespace

Session::Session(Services& services, Socket socket, ipc::PeerCredentials peer,
                 UidAccounts::Share connection, std::function<void(Session*)> on_closed)
    : services_(services),
      socket_(std::move(socket)),
      peer_(std::move(peer)),
      connection_(std::move(connection)),
      on_closed_(std::move(on_closed)),
      framer_(ipc::kMaxLineBytes, kMaxBuffered),
      writer_(std::make_shared<ReplyWriter>(socket_, services.config.write_timeout)),
      line_timer_(socket_.get_executor()) {}

void Session::start() {
    socket_.native_non_blocking(true);
    wait_readable();
}

void Session::close_when_idle() {
    closing_when_idle_ = true;
    if (!in_request_) close();
}

void Session::wait_readable() {
    if (closed_ || reading_stopped_) return;
    socket_.async_wait(Socket::wait_read,
                       [self = shared_from_this()](const boost::system::error_code& ec) {
                           if (ec) {
                               if (ec != boost::asio::error::operation_aborted) self->close();
                               return;
                           }
                           self->on_readable();
                       });
}

void Session::on_readable() {
    if (closed_ || reading_stopped_) return;
    std::array<std::byte, kReadChunk> buffer;
    try {
        for (;;) {
            auto chunk = ipc::receive_with_fds(socket_.native_handle(), buffer, kMaxFdsPerMessage);
            if (!chunk) break;
            if (chunk->closed) {
                // The client left: kill its worker rather than finish unseen work.
                close();
                return;
            }
            if (chunk->fds_truncated)
                throw Error(ErrorCode::invalid_request,
                            "more than one file descriptor arrived with one message");
            framer_.append(std::span(buffer.data(), chunk->size), std::move(chunk->fds));
            if (framer_.pending_fds() > kMaxPendingFds)
                throw Error(ErrorCode::invalid_request,
                            "more file descriptors arrived than request lines to carry them");
        }
    } catch (const Error& e) {
        fail_and_close(e.code(), e.what());
        return;
    }
    process_next();
    wait_readable();
}

// A client may take its time between requests, but a line once begun must
// end within line_timeout: connections held open on half a line are how a
// flood pins the daemon's connection slots.
void Session::watch_unfinished_line() {
    const bool unfinished =
        !in_request_ && !closed_ && framer_.buffered() > 0 && !framer_.has_complete_line();
    if (!unfinished) {
        if (line_timer_armed_) line_timer_.cancel();
        line_timer_armed_ = false;
        return;
    }
    if (line_timer_armed_) return;
    line_timer_armed_ = true;
    line_timer_.expires_after(services_.config.line_timeout);
    line_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec) return;
        self->line_timer_armed_ = false;
        if (!self->in_request_ && self->framer_.buffered() > 0 &&
            !self->framer_.has_complete_line()) {
            self->fail_and_close(
                ErrorCode::timeout,
                "the request line was not finished within " +
                    std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                       self->services_.config.line_timeout)
                                       .count()) +
                    " s");
        }
    });
}

void Session::process_next() {
    if (closed_ || in_request_ || reading_stopped_) return;
    if (closing_when_idle_) {
        close();
        return;
    }
    // Replies this uid has not read yet hold its further requests back.
    if (services_.accounts.reply_budget_spent(peer_.uid)) {
        if (!waiting_for_budget_) {
            waiting_for_budget_ = true;
            std::weak_ptr<Session> weak = shared_from_this();
            services_.accounts.wait_for_reply_budget(peer_.uid, [weak] {
                if (auto self = weak.lock()) {
                    boost::asio::post(self->socket_.get_executor(), [self] {
                        self->waiting_for_budget_ = false;
                        self->process_next();
                    });
                }
            });
        }
        return;
    }
    std::optional<ipc::FramedLine> line;
    try {
        line = framer_.next_line();
    } catch (const Error& e) {
        fail_and_close(e.code(), e.what());
        return;
    }
    if (line) dispatch(std::move(*line));
    watch_unfinished_line();
}

void Session::dispatch(ipc::FramedLine line) {
    in_request_ = true;
    awaiting_reply_ = true;
    audit_ = std::make_shared<RequestAudit>(services_.audit, peer_);
    ipc::Request request;
    try {
        request = ipc::parse_request(line.text);
    } catch (const Error& e) {
        services_.stats.count_request("invalid");
        send(Reply::error(e.code(), e.what(), nullptr));
        return;
    }
    std::weak_ptr<Session> weak = shared_from_this();
    auto pending = handle_request(services_, peer_, std::move(request), std::move(line.fds), audit_,
                                  [weak](Reply reply) {
                                      if (auto self = weak.lock()) self->send(std::move(reply));
                                  });
    // Immediate ops (and early refusals) have replied already.
    if (awaiting_reply_) job_ = std::move(pending);
}

void Session::send(Reply reply) {
    awaiting_reply_ = false;
    job_.reset();
    if (closed_) return;  // dropping audit_ logs the request as cancelled
    auto out = std::make_shared<Reply>(std::move(reply));
    reply_charge_ =
        services_.accounts.charge_reply(peer_.uid, out->line.size() + out->payload.size());
    auto audit = std::exchange(audit_, nullptr);
    std::weak_ptr<Session> weak = shared_from_this();
    writer_->write(out, shared_from_this(), [weak, audit, out](bool delivered) {
        if (auto self = weak.lock()) {
            self->reply_finished(audit, *out, delivered);
        } else if (audit) {
            audit->cancel("the connection closed before the reply was delivered");
        }
    });
}

void Session::reply_finished(const std::shared_ptr<RequestAudit>& audit, const Reply& reply,
                             bool delivered) {
    reply_charge_.release();
    // An error is the request's outcome whether or not its reply was read;
    // a result the client never received is not "ok".
    if (audit) {
        if (delivered || reply.outcome != ErrorCode::ok) {
            audit->finish(reply.outcome, reply.outcome_message);
            services_.stats.count_result(reply.outcome);
        } else {
            audit->cancel("the client did not read the whole reply");
            services_.stats.count_outcome("cancelled");
        }
    }
    services_.memory_trim.after_release(reply.line.size());
    if (!delivered || reply.close_after) return close();
    in_request_ = false;
    // Posted, so a burst of pipelined requests does not recurse.
    boost::asio::post(socket_.get_executor(), [self = shared_from_this()] {
        self->process_next();
        self->watch_unfinished_line();
    });
}

// A protocol violation: log it as its own request, answer it when the write
// side is free, and close. A reply still being written is never replaced.
void Session::fail_and_close(ErrorCode code, const std::string& message) {
    services_.stats.count_request("invalid");
    services_.stats.count_result(code);
    RequestAudit violation(services_.audit, peer_);
    violation.finish(code, message);
    reading_stopped_ = true;
    if (job_) job_->cancel();
    job_.reset();
    audit_.reset();  // the request in progress, if any, is cancelled
    awaiting_reply_ = false;
    in_request_ = true;  // no further requests from this connection
    if (writer_->busy()) return close();
    Reply reply = Reply::error(code, message, nullptr);
    reply.close_after = true;
    auto out = std::make_shared<Reply>(std::move(reply));
    std::weak_ptr<Session> weak = shared_from_this();
    writer_->write(out, shared_from_this(), [weak](bool) {
        if (auto self = weak.lock()) self->close();
    });
}

void Session::close() {
    if (closed_) return;
    closed_ = true;
    if (job_) job_->cancel();
    job_.reset();
    writer_->abandon();
    line_timer_.cancel();
    boost::system::error_code ignored;
    socket_.cancel(ignored);
    socket_.close(ignored);
    audit_.reset();
    reply_charge_.release();
    connection_.release();
    if (on_closed_) on_closed_(this);
}

}  // namespace picklejail::daemon
