// The policies the daemon offers, read from its policy directory at start
// and again on SIGHUP. Requests name a policy; they never carry one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace picklejail::daemon {

class PolicyStore {
  public:
    explicit PolicyStore(std::filesystem::path dir);

    // Rereads every <name>.json in the directory. On any error the previous
    // set stays in force and the error is thrown (Error(invalid_request)).
    void reload();

    // The self-contained policy JSON for `name`; Error(invalid_request) when
    // there is no such policy.
    [[nodiscard]] const std::string& text(const std::string& name) const;
    [[nodiscard]] std::vector<std::string> names() const;
    [[nodiscard]] const std::filesystem::path& dir() const noexcept { return dir_; }
    // Changes on every successful reload (cache keys include it).
    [[nodiscard]] std::uint64_t generation() const noexcept { return generation_; }

  private:
    std::filesystem::path dir_;
    std::map<std::string, std::string> policies_;
    std::uint64_t generation_ = 0;
};

}  // namespace picklejail::daemon
