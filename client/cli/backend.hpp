// Where the CLI's conversions run: through picklejaild when its socket is
// there (--socket, $PICKLEJAIL_SOCKET, or the default path), else in a
// local sandboxed worker. Both end in the same checked image.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "client/cli/commands.hpp"

namespace picklejail::cli {

struct ConvertResult {
    std::uint64_t size = 0;
    std::uint64_t tensors = 0;
    std::string mode;  // "daemon <socket>" or "local sandbox"
};

// Converts `input` and writes the image into `output_fd` (a file or memfd;
// a memfd is sealed). Errors name the mode that failed.
[[nodiscard]] ConvertResult convert_to_fd(const CommonOptions& common, const std::string& input,
                                          int output_fd);

// The inspect listing (ipc::image_summary) for `input`.
[[nodiscard]] nlohmann::json inspect_checkpoint(const CommonOptions& common,
                                                const std::string& input);

}  // namespace picklejail::cli
