// The daemon's request path before any policy or file is involved: bytes
// from a socket framed into lines (ipc/line_framer.hpp), each parsed as a
// protocol request (ipc/protocol.hpp), and every reply the daemon could build
// from it serialized. Any Error is an expected refusal; anything else
// (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "common/error.hpp"
#include "ipc/line_framer.hpp"
#include "ipc/protocol.hpp"

using namespace picklejail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    ipc::LineFramer framer(ipc::kMaxLineBytes, 2 * ipc::kMaxLineBytes);
    auto bytes = std::as_bytes(std::span(data, size));
    // Feed it in uneven chunks, as recvmsg would.
    std::size_t chunk = 1 + (size % 7);
    try {
        while (!bytes.empty()) {
            const auto piece = bytes.first(std::min(chunk, bytes.size()));
            bytes = bytes.subspan(piece.size());
            chunk = chunk * 3 + 1;
            framer.append(piece, {});
            while (auto line = framer.next_line()) {
                try {
                    const auto request = ipc::parse_request(line->text);
                    if (request.path && (request.path->empty() || request.path->front() != '/')) {
                        std::fprintf(stderr, "fuzz: a relative path was accepted\n");
                        std::abort();
                    }
                    (void)ipc::to_line(
                        ipc::ok_reply({{"op", ipc::to_string(request.op)}}, request.id));
                } catch (const Error& e) {
                    if (e.code() != ErrorCode::invalid_request) {
                        std::fprintf(stderr, "fuzz: a bad request gave %s\n",
                                     std::string(to_string(e.code())).c_str());
                        std::abort();
                    }
                    (void)ipc::to_line(ipc::error_reply(e.code(), e.what()));
                }
            }
        }
    } catch (const Error& e) {
        if (e.code() != ErrorCode::invalid_request) std::abort();  // framing refusals only
    }
    return 0;
}
