// Every conversion the CLI makes runs in a confined picklejail-worker; there
// is no in-process path.
#pragma once

#include <string>

#include "client/cli/commands.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::cli {

// Converts `input` in a worker, writing the image into `output_fd`. Throws
// Error with the job's code and message when the worker did not succeed.
sandbox::JobResult convert_in_sandbox(const CommonOptions& common, const std::string& input,
                                      int output_fd);

}  // namespace picklejail::cli
