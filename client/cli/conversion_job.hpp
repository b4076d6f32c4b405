// Loads one checkpoint file into a planned conversion (in-process for now;
// the sandboxed worker replaces this path).
#pragma once

#include <string>

#include "client/cli/commands.hpp"
#include "ipc/file_mapping.hpp"
#include "loader/checkpoint_loader.hpp"

namespace picklejail::cli {

struct LoadedCheckpoint {
    ipc::UniqueFd fd;
    ipc::Mapping input;  // must outlive `conversion`, whose tensors point into it
    std::string policy_name;
    loader::Conversion conversion;
};

[[nodiscard]] LoadedCheckpoint load_checkpoint(const CommonOptions& common,
                                               const std::string& path);

}  // namespace picklejail::cli
