#include "daemon/reply_writer.hpp"

#include <boost/asio/post.hpp>

#include "ipc/fd_passing.hpp"

namespace picklejail::daemon {
namespace {

// Payload bytes per write, so a stalled reader is noticed between writes.
constexpr std::size_t kPayloadStep = std::size_t{4} << 20;

}  // namespace

ReplyWriter::ReplyWriter(Socket& socket, std::chrono::milliseconds stall_timeout)
    : socket_(socket), stall_timeout_(stall_timeout), stall_timer_(socket.get_executor()) {}

void ReplyWriter::write(std::shared_ptr<Reply> reply, std::shared_ptr<void> owner,
                        Finished finished) {
    if (reply_) throw Error(ErrorCode::internal, "a reply was started while another was written");
    reply_ = std::move(reply);
    owner_ = std::move(owner);
    finished_ = std::move(finished);
    line_sent_ = 0;
    payload_sent_ = 0;
    ++generation_;
    progressed();
    send_line();
}

void ReplyWriter::progressed() {
    stall_timer_.expires_after(stall_timeout_);
    stall_timer_.async_wait(
        [self = shared_from_this(), generation = generation_](const boost::system::error_code& ec) {
            if (!ec && self->generation_ == generation && self->reply_) self->end(false);
        });
}

void ReplyWriter::send_line() {
    const auto reply = reply_;
    try {
        while (line_sent_ < reply->line.size()) {
            const auto rest = std::as_bytes(std::span(reply->line)).subspan(line_sent_);
            const std::size_t sent =
                ipc::send_with_fd(socket_.native_handle(), rest, reply->fd.get());
            if (sent == 0) {
                socket_.async_wait(Socket::wait_write,
                                   [self = shared_from_this(), reply, owner = owner_,
                                    generation = generation_](const boost::system::error_code& ec) {
                                       if (self->generation_ != generation || !self->reply_) return;
                                       if (ec) return self->end(false);
                                       self->send_line();
                                   });
                return;
            }
            line_sent_ += sent;
            reply->fd.reset();  // it went with the first byte; ours is no longer needed
            progressed();
        }
    } catch (const Error&) {
        end(false);  // the client is gone
        return;
    }
    send_payload();
}

void ReplyWriter::send_payload() {
    const auto reply = reply_;
    const auto bytes = reply->payload.bytes();
    if (payload_sent_ >= bytes.size()) return end(true);
    const auto step = std::min(kPayloadStep, bytes.size() - payload_sent_);
    // The handler holds `reply`: its mapping stays valid until the kernel is
    // done with the buffer, even if the session has moved on or closed.
    socket_.async_write_some(
        boost::asio::buffer(bytes.data() + payload_sent_, step),
        [self = shared_from_this(), reply, owner = owner_, generation = generation_](
            const boost::system::error_code& ec, std::size_t written) {
            if (self->generation_ != generation || !self->reply_) return;
            if (ec) return self->end(false);
            self->payload_sent_ += written;
            self->progressed();
            self->send_payload();
        });
}

void ReplyWriter::abandon() {
    if (reply_) end(false);
}

void ReplyWriter::end(bool delivered) {
    stall_timer_.cancel();
    reply_.reset();  // pending handlers keep their own reference
    auto finished = std::exchange(finished_, nullptr);
    auto owner = std::exchange(owner_, nullptr);
    if (finished) finished(delivered);
}

}  // namespace picklejail::daemon
