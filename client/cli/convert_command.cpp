#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "client/cli/commands.hpp"
#include "client/cli/report_error.hpp"
#include "client/cli/sandboxed_job.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::cli {
namespace {

std::string default_output(const std::string& input) {
    return std::filesystem::path(input).replace_extension(".safetensors").string();
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

void print_summary(const std::string& output, const sandbox::JobResult& result,
                   const CommonOptions& common, bool json) {
    if (json) {
        const nlohmann::ordered_json summary{{"output", output},
                                             {"size", result.output_size},
                                             {"tensors", result.tensor_count},
                                             {"policy", common.policy}};
        std::printf("%s\n", summary.dump().c_str());
        return;
    }
    std::printf("%s: %llu tensors, %llu bytes (policy %s)\n", output.c_str(),
                static_cast<unsigned long long>(result.tensor_count),
                static_cast<unsigned long long>(result.output_size), common.policy.c_str());
}

}  // namespace

int run_convert(const CommonOptions& common, const ConvertOptions& options) {
    return report_errors([&] {
        if (options.output_fd >= 0) {
            const auto result = convert_in_sandbox(common, options.input, options.output_fd);
            print_summary("fd " + std::to_string(options.output_fd), result, common, options.json);
            return;
        }
        const std::string output =
            options.output.empty() ? default_output(options.input) : options.output;
        PendingOutput pending(output);
        // The worker writes straight into the destination's temporary file.
        const auto result = convert_in_sandbox(common, options.input, pending.fd());
        pending.commit();
        print_summary(output, result, common, options.json);
    });
}

}  // namespace picklejail::cli
