#include "daemon/session.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include "ipc/fd_passing.hpp"
#include "ipc/protocol.hpp"

namespace picklejail::daemon {
namespace {

// Unanswered bytes a client may send ahead: one full line plus change.
constexpr std::size_t kMaxBuffered = 2 * ipc::kMaxLineBytes;
constexpr std::size_t kReadChunk = std::size_t{16} * 1024;
constexpr std::size_t kMaxFdsPerRead = 4;

}  // namespace

Session::Session(Services& services, Socket socket, std::function<void(Session*)> on_closed)
    : services_(services),
      socket_(std::move(socket)),
      on_closed_(std::move(on_closed)),
      framer_(ipc::kMaxLineBytes, kMaxBuffered) {}

void Session::start() {
    socket_.native_non_blocking(true);
    peer_ = ipc::peer_credentials(socket_.native_handle());
    wait_readable();
}

void Session::close_when_idle() {
    closing_when_idle_ = true;
    if (!in_request_) close();
}

void Session::wait_readable() {
    if (closed_ || peer_gone_) return;
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
    if (closed_) return;
    std::array<std::byte, kReadChunk> buffer;
    try {
        for (;;) {
            auto chunk = ipc::receive_with_fds(socket_.native_handle(), buffer, kMaxFdsPerRead);
            if (!chunk) break;
            if (chunk->closed) {
                // The client left: kill its worker rather than finish unseen work.
                peer_gone_ = true;
                if (job_) job_->cancel();
                close();
                return;
            }
            if (chunk->fds_truncated)
                throw Error(ErrorCode::invalid_request, "too many file descriptors attached");
            framer_.append(std::span(buffer.data(), chunk->size), std::move(chunk->fds));
        }
    } catch (const Error& e) {
        fail_and_close(e.code(), e.what());
        return;
    }
    process_next();
    wait_readable();
}

void Session::process_next() {
    if (closed_ || in_request_) return;
    if (closing_when_idle_) {
        close();
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
}

void Session::dispatch(ipc::FramedLine line) {
    in_request_ = true;
    ipc::Request request;
    try {
        request = ipc::parse_request(line.text);
    } catch (const Error& e) {
        services_.stats.count_request("invalid");
        services_.stats.count_result(e.code());
        send(Reply(ipc::error_reply(e.code(), e.what())));
        return;
    }
    std::weak_ptr<Session> weak = shared_from_this();
    job_ = handle_request(services_, peer_, std::move(request), std::move(line.fds),
                          [weak](Reply reply) {
                              if (auto self = weak.lock()) self->send(std::move(reply));
                          });
}

void Session::send(Reply reply) {
    job_.reset();
    if (closed_) return;
    out_line_ = ipc::to_line(reply.message);
    out_sent_ = 0;
    out_fd_ = std::move(reply.fd);
    out_payload_ = std::move(reply.payload);
    out_close_after_ = reply.close_after;
    write_line();
}

void Session::write_line() {
    try {
        while (out_sent_ < out_line_.size()) {
            const auto rest = std::as_bytes(std::span(out_line_)).subspan(out_sent_);
            const std::size_t sent =
                ipc::send_with_fd(socket_.native_handle(), rest, out_fd_.get());
            if (sent == 0) {
                socket_.async_wait(Socket::wait_write, [self = shared_from_this()](
                                                           const boost::system::error_code& ec) {
                    if (ec) return self->close();
                    self->write_line();
                });
                return;
            }
            out_sent_ += sent;
            out_fd_.reset();  // it went with the first byte; ours is no longer needed
        }
    } catch (const Error&) {
        close();  // the client is gone
        return;
    }
    write_payload();
}

void Session::write_payload() {
    if (out_payload_.size() == 0) return on_reply_sent();
    const auto bytes = out_payload_.bytes();
    boost::asio::async_write(
        socket_, boost::asio::buffer(bytes.data(), bytes.size()),
        [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
            self->out_payload_.reset();
            if (ec) return self->close();
            self->on_reply_sent();
        });
}

void Session::on_reply_sent() {
    in_request_ = false;
    if (out_close_after_) return close();
    // Posted, so a burst of pipelined requests does not recurse.
    boost::asio::post(socket_.get_executor(),
                      [self = shared_from_this()] { self->process_next(); });
}

void Session::fail_and_close(ErrorCode code, const std::string& message) {
    services_.stats.count_request("invalid");
    services_.stats.count_result(code);
    if (job_) job_->cancel();
    job_.reset();
    in_request_ = true;  // no further requests from this connection
    Reply reply(ipc::error_reply(code, message));
    reply.close_after = true;
    send(std::move(reply));
}

void Session::close() {
    if (closed_) return;
    closed_ = true;
    if (job_) job_->cancel();
    job_.reset();
    boost::system::error_code ignored;
    socket_.cancel(ignored);
    socket_.close(ignored);
    out_fd_.reset();
    out_payload_.reset();
    if (on_closed_) on_closed_(this);
}

}  // namespace picklejail::daemon
