#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "client/cli/backend.hpp"
#include "client/cli/commands.hpp"
#include "client/cli/progress.hpp"
#include "client/cli/report_error.hpp"
#include "client/cli/sharded_index.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/safetensors_check.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::cli {
namespace {

namespace fs = std::filesystem;

std::string default_output(const std::string& input) {
    return fs::path(input).replace_extension(".safetensors").string();
}

// A temporary file beside the destination, renamed into place only when
// complete, so a failed conversion never leaves a partial output.
class PendingOutput {
  public:
    explicit PendingOutput(std::string destination)
        : destination_(std::move(destination)), temp_path_(destination_ + ".tmp.XXXXXX") {
        fd_.reset(::mkostemp(temp_path_.data(), O_CLOEXEC));
        if (!fd_) throw Error(ErrorCode::io_error, "cannot create " + temp_path_);
    }
    PendingOutput(const PendingOutput&) = delete;
    PendingOutput& operator=(const PendingOutput&) = delete;
    ~PendingOutput() {
        if (!committed_) ::unlink(temp_path_.c_str());
    }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    void commit() {
        if (::fchmod(fd_.get(), 0644) != 0 || ::fsync(fd_.get()) != 0 ||
            ::rename(temp_path_.c_str(), destination_.c_str()) != 0) {
            throw Error(ErrorCode::io_error, "cannot write " + destination_);
        }
        committed_ = true;
    }

  private:
    std::string destination_;
    std::string temp_path_;
    ipc::UniqueFd fd_;
    bool committed_ = false;
};

void print_summary(const std::string& output, const ConvertResult& result,
                   const CommonOptions& common, bool json) {
    if (json) {
        const nlohmann::ordered_json summary{{"output", output},
                                             {"size", result.size},
                                             {"tensors", result.tensors},
                                             {"policy", common.policy},
                                             {"mode", result.mode}};
        std::printf("%s\n", summary.dump().c_str());
        return;
    }
    std::printf("%s: %llu tensors, %llu bytes (policy %s, %s)\n", output.c_str(),
                static_cast<unsigned long long>(result.tensors),
                static_cast<unsigned long long>(result.size), common.policy.c_str(),
                result.mode.c_str());
}

// What a converted shard holds: every name it answers to (stored tensors
// and aliases) and its tensor bytes, read back from the checked output.
struct ShardContents {
    std::set<std::string> names;
    std::uint64_t tensor_bytes = 0;
};

ShardContents read_shard(const fs::path& shard) {
    const auto fd = ipc::open_read_only(shard.string());
    const auto image =
        ipc::map_read_only(fd.get(), ipc::regular_file_size(fd.get(), "shard"), shard.string());
    const auto index = ipc::check_safetensors(image.bytes());
    ShardContents contents;
    for (const auto& t : index.tensors) contents.names.insert(t.name);
    for (const auto& [key, value] : index.metadata) contents.names.insert(key);
    contents.tensor_bytes = index.tensors.empty() ? 0 : index.tensors.back().end;
    return contents;
}

void convert_sharded(const CommonOptions& common, const ConvertOptions& options,
                     const fs::path& index_path) {
    const auto sharded = read_shard_index(index_path);
    const fs::path source_dir = index_path.parent_path();
    const fs::path out_dir = options.output.empty() ? source_dir : fs::path(options.output);
    fs::create_directories(out_dir);
    std::uint64_t total = 0;
    for (const auto& shard : sharded.shards) {
        std::error_code ec;
        total += fs::file_size(source_dir / shard, ec);
    }
    std::map<std::string, std::string> new_names;
    std::map<std::string, ShardContents> contents;
    std::uint64_t total_tensor_bytes = 0;
    {
        ProgressBar progress(total, sharded.shards.size());
        for (const auto& shard : sharded.shards) {
            const auto target = out_dir / safetensors_shard_name(shard);
            progress.start_item(target.filename().string());
            PendingOutput pending(target.string());
            const auto result = convert_to_fd(common, (source_dir / shard).string(), pending.fd());
            pending.commit();
            new_names[shard] = target.filename().string();
            contents[shard] = read_shard(target);
            total_tensor_bytes += contents[shard].tensor_bytes;
            std::error_code ec;
            progress.finish_item(fs::file_size(source_dir / shard, ec));
            if (!options.json) print_summary(target.string(), result, common, false);
        }
    }
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (const auto& [tensor, shard] : sharded.weight_map) {
        if (!contents[shard].names.contains(tensor)) {
            std::string message = "the index puts \"";
            message += tensor;
            message += "\" in " + shard + ", which does not hold it";
            throw Error(ErrorCode::malformed, message);
        }
        weight_map[tensor] = new_names[shard];
    }
    nlohmann::ordered_json metadata = nlohmann::ordered_json::parse(sharded.metadata.dump());
    metadata["total_size"] = total_tensor_bytes;
    const nlohmann::ordered_json index{{"metadata", metadata}, {"weight_map", weight_map}};
    const auto index_out = out_dir / "model.safetensors.index.json";
    PendingOutput pending(index_out.string());
    const std::string text = index.dump(2) + "\n";
    if (::write(pending.fd(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        throw Error(ErrorCode::io_error, "cannot write " + index_out.string());
    pending.commit();
    if (options.json) {
        std::printf("%s\n", nlohmann::ordered_json{{"index", index_out.string()},
                                                   {"shards", sharded.shards.size()},
                                                   {"tensors", weight_map.size()}}
                                .dump()
                                .c_str());
    } else {
        std::printf("%s: %zu shards, %zu tensors\n", index_out.c_str(), sharded.shards.size(),
                    weight_map.size());
    }
}

}  // namespace

int run_convert(const CommonOptions& common, const ConvertOptions& options) {
    return report_errors([&] {
        if (options.output_fd >= 0) {
            const auto result = convert_to_fd(common, options.input, options.output_fd);
            print_summary("fd " + std::to_string(options.output_fd), result, common, options.json);
            return;
        }
        if (common.input_fd < 0) {
            if (const auto index = find_shard_index(options.input)) {
                convert_sharded(common, options, *index);
                return;
            }
        }
        const std::string output =
            options.output.empty() ? default_output(options.input) : options.output;
        PendingOutput pending(output);
        // Locally the worker writes straight into the destination's temporary file.
        const auto result = convert_to_fd(common, options.input, pending.fd());
        pending.commit();
        print_summary(output, result, common, options.json);
    });
}

}  // namespace picklejail::cli
