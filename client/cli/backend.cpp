#include "client/cli/backend.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include "client/cli/sandboxed_job.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/image_summary.hpp"
#include "ipc/memfd.hpp"
#include "ipc/safetensors_check.hpp"
#include "picklejail/client.hpp"

namespace picklejail::cli {
namespace {

// The daemon takes policy names only; a policy file means a local run.
bool policy_is_a_file(const std::string& policy) {
    return policy.find('/') != std::string::npos || policy.ends_with(".json");
}

// A daemon to use, or nullopt for a local run. An explicit socket must
// answer; the default one is used only when it exists.
std::optional<std::filesystem::path> daemon_socket(const CommonOptions& common) {
    if (common.local || policy_is_a_file(common.policy) || !common.limits_file.empty())
        return std::nullopt;
    if (!common.socket.empty()) return std::filesystem::path(common.socket);
    const auto fallback = Client::default_socket_path();
    struct stat st {};
    if (::stat(fallback.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return fallback;
    return std::nullopt;
}

[[noreturn]] void rethrow_with_mode(const Error& e, const std::string& mode) {
    throw Error(e.code(), mode + ": " + e.what());
}

ipc::UniqueFd open_input(const CommonOptions& common, const std::string& input) {
    if (common.input_fd >= 0) {
        ipc::UniqueFd dup(::fcntl(common.input_fd, F_DUPFD_CLOEXEC, 0));
        if (!dup) throw Error(ErrorCode::io_error, "bad --input-fd");
        return dup;
    }
    return ipc::open_read_only(input);
}

void write_all(int fd, std::span<const std::byte> bytes) {
    std::uint64_t offset = 0;
    while (offset < bytes.size()) {
        const ssize_t n =
            ::pwrite(fd, bytes.data() + offset, bytes.size() - offset, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw Error(ErrorCode::io_error, std::string("write: ") + std::strerror(errno));
        offset += static_cast<std::uint64_t>(n);
    }
    if (::ftruncate(fd, static_cast<off_t>(bytes.size())) != 0)
        throw Error(ErrorCode::io_error, std::string("truncate: ") + std::strerror(errno));
}

LoadOptions load_options(const CommonOptions& common) {
    return LoadOptions{common.policy, common.select, common.map_file};
}

}  // namespace

ConvertResult convert_to_fd(const CommonOptions& common, const std::string& input, int output_fd) {
    if (const auto socket = daemon_socket(common)) {
        const std::string mode = "daemon " + socket->string();
        try {
            Client client(*socket, std::chrono::seconds(common.deadline_seconds + 30));
            const auto input_fd = open_input(common, input);
            const auto image = client.load_fd(input_fd.get(), load_options(common));
            write_all(output_fd, image.bytes());
            if (ipc::is_memfd(output_fd)) ipc::seal_image(output_fd);
            return {image.bytes().size(), image.tensors().size(), mode};
        } catch (const Error& e) {
            rethrow_with_mode(e, mode);
        }
    }
    try {
        const auto result = convert_in_sandbox(common, input, output_fd);
        return {result.output_size, result.tensor_count, "local sandbox"};
    } catch (const Error& e) {
        rethrow_with_mode(e, "local sandbox");
    }
}

nlohmann::json inspect_checkpoint(const CommonOptions& common, const std::string& input) {
    if (const auto socket = daemon_socket(common)) {
        const std::string mode = "daemon " + socket->string();
        try {
            Client client(*socket, std::chrono::seconds(common.deadline_seconds + 30));
            const auto input_fd = open_input(common, input);
            auto listing = client.inspect_fd(input_fd.get(), load_options(common));
            listing.erase("id");
            return listing;
        } catch (const Error& e) {
            rethrow_with_mode(e, mode);
        }
    }
    try {
        const auto image_fd = ipc::create_image_memfd("picklejail-inspect");
        const auto result = convert_in_sandbox(common, input, image_fd.get());
        const auto image = ipc::map_read_only(image_fd.get(), result.output_size, "image");
        return nlohmann::json::parse(
            ipc::image_summary(ipc::check_safetensors(image.bytes()), common.policy).dump());
    } catch (const Error& e) {
        rethrow_with_mode(e, "local sandbox");
    }
}

}  // namespace picklejail::cli
