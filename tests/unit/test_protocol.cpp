// The wire: request parsing, reply shapes, line framing with attached fds,
// and fd passing over a real socketpair.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "ipc/fd_passing.hpp"
#include "ipc/line_framer.hpp"
#include "ipc/protocol.hpp"

using namespace picklejail;
using ipc::Op;
using ipc::Transport;

namespace {

ErrorCode parse_error(std::string_view line) {
    try {
        (void)ipc::parse_request(line);
    } catch (const Error& e) {
        return e.code();
    }
    return ErrorCode::ok;
}

std::span<const std::byte> bytes_of(std::string_view text) {
    return std::as_bytes(std::span(text.data(), text.size()));
}

}  // namespace

TEST_CASE("requests parse into ops with their fields") {
    const auto load = ipc::parse_request(
        R"({"op":"load","path":"/m.pt","policy":"checkpoint","transport":"shm","select":["a."],"id":[1]})");
    CHECK(load.op == Op::load);
    CHECK(load.path == "/m.pt");
    CHECK_FALSE(load.fd);
    CHECK(load.policy == "checkpoint");
    CHECK(load.transport == Transport::shm);
    CHECK(load.select == std::vector<std::string>{"a."});
    CHECK(load.id == nlohmann::json::array({1}));

    const auto by_fd = ipc::parse_request(R"({"op":"inspect","fd":true,"future_field":3})");
    CHECK(by_fd.op == Op::inspect);
    CHECK(by_fd.fd);
    CHECK(by_fd.transport == Transport::memfd);
    CHECK(ipc::parse_request(R"({"op":"release","shm_name":"x"})").shm_name == "x");
    CHECK(ipc::parse_request(R"({"op":"stats"})").op == Op::stats);
}

TEST_CASE("bad requests are invalid_request, never anything else") {
    for (const char* line : {"",
                             "nul",
                             "{",
                             "[]",
                             "3",
                             R"({"op":1})",
                             R"({"op":"fly"})",
                             R"({"op":"load"})",
                             R"({"op":"load","path":"/a","fd":true})",
                             R"({"op":"load","path":"rel"})",
                             R"({"op":"load","path":""})",
                             R"({"op":"load","fd":"yes"})",
                             R"({"op":"load","path":"/a","policy":"../x"})",
                             R"({"op":"load","path":"/a","policy":""})",
                             R"({"op":"load","path":"/a","transport":"pigeon"})",
                             R"({"op":"load","path":"/a","select":"a"})",
                             R"({"op":"load","path":"/a","select":[1]})",
                             R"({"op":"load","path":"/a","select":[""]})",
                             R"({"op":"release"})",
                             R"({"op":"load","path":"/a\u0000b"})"}) {
        INFO(line);
        const auto code = parse_error(line);
        // An empty policy string means "the default", so it parses.
        if (std::string_view(line).find(R"("policy":"")") != std::string_view::npos) {
            CHECK(code == ErrorCode::ok);
        } else {
            CHECK(code == ErrorCode::invalid_request);
        }
    }
    CHECK(parse_error(std::string(70'000, ' ')) == ErrorCode::invalid_request);
}

TEST_CASE("error replies carry the code, message and named global") {
    const auto reply = ipc::error_reply(ErrorCode::forbidden_global,
                                        "at byte 3: global os.system is not allowed by policy", 7);
    CHECK(reply["ok"] == false);
    CHECK(reply["id"] == 7);
    CHECK(reply["error"]["code"] == "forbidden_global");
    CHECK(reply["error"]["global"] == "os.system");
    CHECK_FALSE(ipc::error_reply(ErrorCode::malformed, "bad zip")["error"].contains("global"));
    CHECK(ipc::named_global("global builtins.eval may not be called") == "builtins.eval");
    CHECK(ipc::named_global("no global here") == "");
    const auto line = ipc::to_line(nlohmann::json{{"m", std::string("\xff\xfe")}});
    CHECK(line.back() == '\n');
    CHECK(nlohmann::json::parse(line).is_object());  // invalid UTF-8 replaced, still JSON
}

TEST_CASE("the framer splits lines and keeps fds with their line") {
    ipc::LineFramer framer(64, 128);
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    std::vector<ipc::UniqueFd> fds;
    fds.emplace_back(pipe_fds[0]);
    framer.append(bytes_of(R"({"op":"pi)"), {});
    CHECK_FALSE(framer.next_line());
    framer.append(bytes_of("ng\"}\n{\"op\":\"load\",\"fd\":true}\n"), std::move(fds));
    auto first = framer.next_line();
    REQUIRE(first);
    CHECK(first->text == R"({"op":"ping"})");
    // The fd arrived with a chunk whose first byte belongs to the first line.
    CHECK(first->fds.size() == 1);
    auto second = framer.next_line();
    REQUIRE(second);
    CHECK(second->fds.empty());
    CHECK_FALSE(framer.next_line());
    ::close(pipe_fds[1]);
}

TEST_CASE("the framer refuses long lines and floods") {
    ipc::LineFramer framer(16, 64);
    framer.append(bytes_of(std::string(20, 'x')), {});
    CHECK_THROWS_AS(framer.next_line(), Error);
    ipc::LineFramer flood(16, 32);
    flood.append(bytes_of("a\nb\nc\nd\n"), {});
    CHECK_THROWS_AS(flood.append(bytes_of(std::string(40, 'y')), {}), Error);
    ipc::LineFramer exact(16, 64);
    exact.append(bytes_of(std::string(15, 'z') + "\n"), {});
    CHECK(exact.next_line()->text.size() == 15);
}

TEST_CASE("fds cross a socketpair with the bytes they ride on") {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    ipc::UniqueFd a(pair[0]), b(pair[1]);
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    ipc::UniqueFd pr(pipe_fds[0]), pw(pipe_fds[1]);
    ipc::send_all(a.get(), bytes_of("hello\n"), pw.get());
    std::array<std::byte, 64> buffer{};
    auto chunk = ipc::receive_with_fds(b.get(), buffer, 4);
    REQUIRE(chunk);
    CHECK(chunk->size == 6);
    REQUIRE(chunk->fds.size() == 1);
    CHECK((::fcntl(chunk->fds[0].get(), F_GETFD) & FD_CLOEXEC) != 0);
    REQUIRE(::write(chunk->fds[0].get(), "z", 1) == 1);  // the received fd is the pipe's write end
    char c = 0;
    REQUIRE(::read(pr.get(), &c, 1) == 1);
    CHECK(c == 'z');
    a.reset();
    chunk = ipc::receive_with_fds(b.get(), buffer, 4);
    REQUIRE(chunk);
    CHECK(chunk->closed);
}
