#include "daemon/policy_store.hpp"

#include "common/error.hpp"
#include "loader/policy.hpp"
#include "sandbox/policy_files.hpp"

namespace picklejail::daemon {

PolicyStore::PolicyStore(std::filesystem::path dir) : dir_(std::move(dir)) {
    reload();
}

void PolicyStore::reload() {
    std::map<std::string, std::string> loaded;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
        if (entry.path().extension() != ".json") continue;
        const std::string name = entry.path().stem().string();
        std::string text = sandbox::load_policy_text(name, dir_);
        (void)loader::Policy::from_json(text);  // refuse a broken file now, not per request
        loaded.emplace(name, std::move(text));
    }
    if (ec)
        throw Error(ErrorCode::invalid_request, "cannot read policy directory " + dir_.string());
    if (loaded.empty()) throw Error(ErrorCode::invalid_request, "no policies in " + dir_.string());
    policies_ = std::move(loaded);
    ++generation_;
}

const std::string& PolicyStore::text(const std::string& name) const {
    const auto it = policies_.find(name);
    if (it == policies_.end())
        throw Error(ErrorCode::invalid_request, "unknown policy \"" + name + "\"");
    return it->second;
}

std::vector<std::string> PolicyStore::names() const {
    std::vector<std::string> out;
    for (const auto& [name, text] : policies_) out.push_back(name);
    return out;
}

}  // namespace picklejail::daemon
