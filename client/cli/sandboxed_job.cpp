#include "client/cli/sandboxed_job.hpp"

#include <fstream>
#include <sstream>

#include "ipc/file_mapping.hpp"
#include "sandbox/policy_files.hpp"

namespace picklejail::cli {
namespace {

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw Error(ErrorCode::io_error, "cannot read " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

sandbox::JobResult convert_in_sandbox(const CommonOptions& common, const std::string& input,
                                      int output_fd) {
    const auto dir = common.policy_dir.empty() ? sandbox::default_policy_dir()
                                               : std::filesystem::path(common.policy_dir);
    sandbox::SpawnOptions options;
    options.policy_json = sandbox::load_policy_text(common.policy, dir);
    if (!common.limits_file.empty()) options.limits_json = read_text(common.limits_file);
    options.deadline = std::chrono::seconds(common.deadline_seconds);
    options.memory_bytes = common.memory_bytes;
    options.select = common.select;
    options.map_file = common.map_file;
    const auto input_fd = common.input_fd >= 0 ? ipc::UniqueFd() : ipc::open_read_only(input);
    auto result = sandbox::run_worker(common.input_fd >= 0 ? common.input_fd : input_fd.get(),
                                      output_fd, options);
    if (result.status != ErrorCode::ok) throw Error(result.status, sandbox::describe(result));
    return result;
}

}  // namespace picklejail::cli
