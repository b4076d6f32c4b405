// A reply on its way from a request's handler to the session that writes it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/protocol.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

struct Reply {
    // The whole line with its '\n', already serialized (large replies are
    // serialized off the event loop).
    std::string line;
    ipc::UniqueFd fd;      // attached with SCM_RIGHTS (memfd transport)
    ipc::Mapping payload;  // raw bytes after the line (inline transport)
    bool close_after = false;
    // How the request ended, for the audit line and the stats.
    ErrorCode outcome = ErrorCode::ok;
    std::string outcome_message;

    [[nodiscard]] static Reply ok(const nlohmann::json& fields, const nlohmann::json& id) {
        Reply reply;
        reply.line = ipc::to_line(ipc::ok_reply(fields, id));
        return reply;
    }
    [[nodiscard]] static Reply error(ErrorCode code, std::string_view message,
                                     const nlohmann::json& id) {
        Reply reply;
        reply.line = ipc::to_line(ipc::error_reply(code, message, id));
        reply.outcome = code;
        reply.outcome_message = message;
        return reply;
    }
};

}  // namespace picklejail::daemon
