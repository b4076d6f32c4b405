// The daemon's socket protocol, version 1 (docs/protocol.md): request
// parsing and the shape of replies. Pure: no I/O, so it is fuzzed directly.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace picklejail::ipc {

inline constexpr int kProtocolVersion = 1;
inline constexpr std::size_t kMaxLineBytes = 65536;  // request lines, including the '\n'
// Reply lines: an inspect listing of a large header runs to tens of MB; the
// daemon answers too_large rather than send more, so clients can bound buffers.
inline constexpr std::size_t kMaxReplyLineBytes = std::size_t{256} << 20;

enum class Op { ping, load, inspect, release, stats };
enum class Transport { memfd, shm, inline_bytes };

[[nodiscard]] std::string_view to_string(Op op) noexcept;
[[nodiscard]] std::string_view to_string(Transport transport) noexcept;

struct Request {  // NOLINT(bugprone-exception-escape): members never throw when empty
    Op op = Op::ping;
    nlohmann::json id;                // echoed back; null when absent
    std::optional<std::string> path;  // load/inspect: an absolute path
    bool fd = false;                  // load/inspect: the attached fd is the file
    std::string policy;               // empty: the daemon's default
    Transport transport = Transport::memfd;
    std::vector<std::string> select;
    bool map_file = false;  // load "mmap": layout-only image for the client's own mapping
    std::string shm_name;   // release
};

// Parses one request line (without '\n'). Throws Error(invalid_request)
// naming the field at fault.
[[nodiscard]] Request parse_request(std::string_view line);

// {"ok":false,"error":{"code","message"[,"global"]}}, plus the id when set.
[[nodiscard]] nlohmann::json error_reply(ErrorCode code, std::string_view message,
                                         const nlohmann::json& id = nullptr);
// {"ok":true, ...fields}, plus the id when set.
[[nodiscard]] nlohmann::json ok_reply(const nlohmann::json& fields,
                                      const nlohmann::json& id = nullptr);

// The global a loader message names ("global os.system is not allowed…"),
// or empty.
[[nodiscard]] std::string named_global(std::string_view message);

// One line on the wire: compact JSON and '\n'; invalid UTF-8 is replaced.
[[nodiscard]] std::string to_line(const nlohmann::json& message);

}  // namespace picklejail::ipc
