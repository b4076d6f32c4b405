// Hugging Face sharded checkpoints: pytorch_model.bin.index.json names the
// shard holding each tensor. We convert every shard and write
// model.safetensors.index.json the way Hugging Face's converter does.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace picklejail::cli {

struct ShardedCheckpoint {  // NOLINT(bugprone-exception-escape): empty members never throw
    std::filesystem::path index_path;
    nlohmann::json metadata;                        // the index's "metadata", kept
    std::map<std::string, std::string> weight_map;  // tensor → shard file name
    std::vector<std::string> shards;                // distinct shard names, in index order
};

// The index inside `input` when it is one (a *.index.json file, or a
// directory holding pytorch_model.bin.index.json); nullopt otherwise.
[[nodiscard]] std::optional<std::filesystem::path> find_shard_index(
    const std::filesystem::path& input);

// Parses an index. Shard names must be plain file names beside the index
// (no '/', no ".."): the index is as untrusted as the shards.
// Throws Error(malformed | io_error).
[[nodiscard]] ShardedCheckpoint read_shard_index(const std::filesystem::path& index_path);

// pytorch_model-00001-of-00002.bin → model-00001-of-00002.safetensors
[[nodiscard]] std::string safetensors_shard_name(const std::string& shard);

}  // namespace picklejail::cli
