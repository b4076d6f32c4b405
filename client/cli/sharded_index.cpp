#include "client/cli/sharded_index.hpp"

#include <fstream>
#include <sstream>

#include "common/error.hpp"

namespace picklejail::cli {
namespace {

constexpr std::uintmax_t kMaxIndexBytes = 64ULL << 20;

[[noreturn]] void bad_index(const std::filesystem::path& path, const std::string& why) {
    throw Error(ErrorCode::malformed, path.string() + ": " + why);
}

bool plain_file_name(const std::string& name) {
    return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
           name.find('\0') == std::string::npos;
}

}  // namespace

std::optional<std::filesystem::path> find_shard_index(const std::filesystem::path& input) {
    std::error_code ec;
    if (std::filesystem::is_directory(input, ec)) {
        for (const char* name : {"pytorch_model.bin.index.json", "model.pt.index.json"}) {
            if (std::filesystem::is_regular_file(input / name, ec)) return input / name;
        }
        return std::nullopt;
    }
    if (input.filename().string().ends_with(".index.json")) return input;
    return std::nullopt;
}

ShardedCheckpoint read_shard_index(const std::filesystem::path& index_path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(index_path, ec);
    if (ec) throw Error(ErrorCode::io_error, "cannot read " + index_path.string());
    if (size > kMaxIndexBytes) bad_index(index_path, "index larger than 64 MiB");
    std::ifstream in(index_path);
    std::ostringstream text;
    text << in.rdbuf();
    const auto parsed = nlohmann::json::parse(text.str(), nullptr, false);
    if (!parsed.is_object()) bad_index(index_path, "not a JSON object");
    const auto map = parsed.find("weight_map");
    if (map == parsed.end() || !map->is_object() || map->empty())
        bad_index(index_path, "no \"weight_map\" object");
    ShardedCheckpoint out;
    out.index_path = index_path;
    out.metadata = parsed.value("metadata", nlohmann::json::object());
    if (!out.metadata.is_object()) bad_index(index_path, "\"metadata\" is not an object");
    for (const auto& [tensor, shard] : map->items()) {
        if (!shard.is_string()) bad_index(index_path, "weight_map values must be file names");
        const auto& name = shard.get_ref<const std::string&>();
        if (!plain_file_name(name))
            bad_index(index_path, "shard \"" + name + "\" is not a file beside the index");
        if (std::find(out.shards.begin(), out.shards.end(), name) == out.shards.end())
            out.shards.push_back(name);
        out.weight_map.emplace(tensor, name);
    }
    return out;
}

std::string safetensors_shard_name(const std::string& shard) {
    std::string name = shard;
    if (const auto at = name.find("pytorch_model"); at != std::string::npos)
        name.replace(at, std::string_view("pytorch_model").size(), "model");
    for (const char* ext : {".bin", ".pth", ".pt", ".ckpt"}) {
        if (name.ends_with(ext)) {
            name.resize(name.size() - std::string_view(ext).size());
            break;
        }
    }
    return name + ".safetensors";
}

}  // namespace picklejail::cli
