#include "sandbox/policy_files.hpp"

#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.hpp"

#ifndef PICKLEJAIL_INSTALL_POLICY_DIR
#define PICKLEJAIL_INSTALL_POLICY_DIR "/usr/local/share/picklejail/policies"
#endif

namespace picklejail::sandbox {
namespace {

constexpr int kMaxExtendsDepth = 4;
constexpr std::uintmax_t kMaxPolicyBytes = 1 << 20;

std::filesystem::path executable_dir() {
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::path() : exe.parent_path();
}

std::string read_small_file(const std::filesystem::path& path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw Error(ErrorCode::invalid_request, "policy file " + path.string() + " not found");
    if (size > kMaxPolicyBytes)
        throw Error(ErrorCode::invalid_request, "policy file " + path.string() + " is too large");
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in && !in.eof())
        throw Error(ErrorCode::io_error, "cannot read policy file " + path.string());
    return text.str();
}

bool is_path(std::string_view name) {
    return name.find('/') != std::string_view::npos || name.ends_with(".json");
}

nlohmann::json load_merged(std::string_view name_or_path, const std::filesystem::path& dir,
                           int depth) {
    if (depth > kMaxExtendsDepth)
        throw Error(ErrorCode::invalid_request, "policy \"extends\" chain is too long");
    if (!is_path(name_or_path)) {
        for (const char c : name_or_path) {
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
                throw Error(ErrorCode::invalid_request,
                            "invalid policy name \"" + std::string(name_or_path) + "\"");
            }
        }
    }
    const std::filesystem::path path = is_path(name_or_path)
                                           ? std::filesystem::path(name_or_path)
                                           : dir / (std::string(name_or_path) + ".json");
    auto doc = nlohmann::json::parse(read_small_file(path), nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
        throw Error(ErrorCode::invalid_request,
                    "policy file " + path.string() + " is not a JSON object");
    }
    if (!doc.contains("extends")) return doc;
    if (!doc["extends"].is_string())
        throw Error(ErrorCode::invalid_request, "policy \"extends\" must be a string");
    auto base = load_merged(doc["extends"].get<std::string>(),
                            is_path(name_or_path) ? path.parent_path() : dir, depth + 1);
    for (const auto& [key, value] : doc.items()) {
        if (key == "globals" && value.is_object() && base.contains("globals")) {
            for (const auto& [global, handler] : value.items()) base["globals"][global] = handler;
        } else if (key != "extends") {
            base[key] = value;
        }
    }
    return base;
}

}  // namespace

std::filesystem::path default_policy_dir() {
    if (const char* env = std::getenv("PICKLEJAIL_POLICY_DIR"); env != nullptr && *env != '\0')
        return env;
    const auto beside = executable_dir() / ".." / "share" / "picklejail" / "policies";
    std::error_code ec;
    if (std::filesystem::is_directory(beside, ec)) return beside.lexically_normal();
    return PICKLEJAIL_INSTALL_POLICY_DIR;
}

std::string load_policy_text(std::string_view name_or_path, const std::filesystem::path& dir) {
    return load_merged(name_or_path, dir, 0).dump();
}

}  // namespace picklejail::sandbox
