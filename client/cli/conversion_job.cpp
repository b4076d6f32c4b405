#include "client/cli/conversion_job.hpp"

#include <fstream>
#include <sstream>

#include "common/error.hpp"
#include "sandbox/policy_files.hpp"

namespace picklejail::cli {
namespace {

loader::Limits read_limits(const std::string& path) {
    if (path.empty()) return {};
    std::ifstream in(path);
    if (!in) throw Error(ErrorCode::io_error, "cannot read limits file " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return loader::limits_from_json(text.str());
}

}  // namespace

LoadedCheckpoint load_checkpoint(const CommonOptions& common, const std::string& path) {
    const auto dir = common.policy_dir.empty() ? sandbox::default_policy_dir()
                                               : std::filesystem::path(common.policy_dir);
    const auto policy = loader::Policy::from_json(sandbox::load_policy_text(common.policy, dir));
    const auto limits = read_limits(common.limits_file);
    auto fd = ipc::open_read_only(path);
    const auto size = ipc::regular_file_size(fd.get(), path);
    auto input = ipc::map_read_only(fd.get(), size, path);
    auto conversion = loader::Conversion::plan(input.bytes(), policy, limits);
    return {std::move(fd), std::move(input), policy.name(), std::move(conversion)};
}

}  // namespace picklejail::cli
