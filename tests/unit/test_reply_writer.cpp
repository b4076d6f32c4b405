// A session's write side (daemon/reply_writer.hpp) on a real socket pair:
// exact bytes with a slow reader, a stalled reader timed out, and a reply
// abandoned mid-write whose bytes stay valid until the kernel is done.
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <thread>

#include "daemon/reply_writer.hpp"

using namespace picklejail;
using daemon::Reply;
using daemon::ReplyWriter;
using Socket = ReplyWriter::Socket;

namespace {

struct Pair {
    Socket daemon_side;
    ipc::UniqueFd client_side;
};

Pair socket_pair(boost::asio::io_context& io) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    Socket socket(io, boost::asio::local::stream_protocol(), fds[0]);
    socket.native_non_blocking(true);
    return {std::move(socket), ipc::UniqueFd(fds[1])};
}

std::shared_ptr<Reply> reply_with_payload(std::size_t size) {
    auto reply = std::make_shared<Reply>();
    reply->line = "{\"ok\":true}\n";
    ipc::UniqueFd fd(::memfd_create("payload", MFD_CLOEXEC));
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 131 % 251);
    REQUIRE(::write(fd.get(), bytes.data(), size) == static_cast<ssize_t>(size));
    reply->payload = ipc::map_read_only(fd.get(), size, "payload");
    return reply;
}

std::string read_all(int fd, std::size_t want) {
    std::string got;
    std::array<char, 65536> buffer{};
    while (got.size() < want) {
        const ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n <= 0) break;
        got.append(buffer.data(), static_cast<std::size_t>(n));
    }
    return got;
}

}  // namespace

TEST_CASE("reply writer: a large payload arrives whole and in order") {
    boost::asio::io_context io;
    auto [socket, client] = socket_pair(io);
    auto writer = std::make_shared<ReplyWriter>(socket, std::chrono::seconds(10));
    const std::size_t size = 12U << 20;  // several steps, far more than the socket buffer
    auto reply = reply_with_payload(size);
    const std::string expected =
        reply->line +
        std::string(reinterpret_cast<const char*>(reply->payload.bytes().data()), size);
    std::string received;
    std::thread reader(
        [&received, fd = client.get(), want = expected.size()] { received = read_all(fd, want); });
    int finished = 0;
    bool delivered = false;
    writer->write(reply, nullptr, [&](bool ok) {
        ++finished;
        delivered = ok;
    });
    reply.reset();  // the writer and its handlers hold it
    io.run();
    reader.join();
    CHECK(finished == 1);
    CHECK(delivered);
    CHECK(received == expected);
    CHECK_FALSE(writer->busy());
}

TEST_CASE("reply writer: a reader that stops reading is timed out") {
    boost::asio::io_context io;
    auto [socket, client] = socket_pair(io);
    auto writer = std::make_shared<ReplyWriter>(socket, std::chrono::milliseconds(200));
    int finished = 0;
    bool delivered = true;
    const auto start = std::chrono::steady_clock::now();
    writer->write(reply_with_payload(8U << 20), nullptr, [&](bool ok) {
        ++finished;
        delivered = ok;
        boost::system::error_code ignored;
        socket.close(ignored);  // as the session does
    });
    io.run();
    CHECK(finished == 1);
    CHECK_FALSE(delivered);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
}

TEST_CASE("reply writer: an abandoned reply's bytes outlive the pending write") {
    boost::asio::io_context io;
    auto [socket, client] = socket_pair(io);
    auto writer = std::make_shared<ReplyWriter>(socket, std::chrono::seconds(10));
    auto reply = reply_with_payload(8U << 20);
    std::weak_ptr<Reply> watch = reply;
    bool delivered = true;
    writer->write(std::move(reply), nullptr, [&](bool ok) { delivered = ok; });
    io.poll();  // the first payload write is now pending on a full socket
    CHECK(writer->busy());
    writer->abandon();
    CHECK_FALSE(delivered);
    CHECK_FALSE(watch.expired());  // a pending handler still holds the payload
    boost::system::error_code ignored;
    socket.close(ignored);
    io.run();
    CHECK(watch.expired());  // freed once the cancelled write completed
    // A new reply can be written after an abandoned one.
    CHECK_FALSE(writer->busy());
}
