// The worker's syscall allowlist, and nothing else. Built before any
// untrusted byte is read; loaded as the last confinement step.
#pragma once

#include <memory>

namespace picklejail::sandbox {

class SeccompFilter {
  public:
    // Default action for unlisted syscalls: SECCOMP_RET_TRAP, so the worker's
    // SIGSYS handler (worker_signals.hpp) can report the syscall number before it exits; a foreign
    // architecture (int 0x80, x32) kills the process outright.
    [[nodiscard]] static SeccompFilter worker_policy();
    SeccompFilter(SeccompFilter&&) noexcept;
    SeccompFilter& operator=(SeccompFilter&&) noexcept;
    ~SeccompFilter();

    // Loads the filter into the calling (single-threaded) process.
    void load();

  private:
    SeccompFilter() = default;
    struct Context;
    std::unique_ptr<Context> context_;
};

}  // namespace picklejail::sandbox
