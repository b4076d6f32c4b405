// Forbidden acts a confined worker attempts in `picklejail selftest`: each
// must be stopped by the sandbox; surviving one is a failure. The list is
// per architecture: the 32-bit and x32 entries exist only on x86-64.
#pragma once

#include <array>
#include <string_view>

namespace picklejail::sandbox {

// "copy_thread_open_file" is open_file attempted from the worker's copy
// thread (worker_main.cpp), which must be confined like the main thread.
#if defined(__x86_64__)
inline constexpr std::array<std::string_view, 11> kSelftestActs{
    "open_file",
    "socket_connect",
    "execve",
    "fork",
    "ptrace",
    "kill",
    "mprotect_exec",
    "int80",
    "x32_syscall",
    "write_foreign_fd",
    "copy_thread_open_file",
};
#else
inline constexpr std::array<std::string_view, 9> kSelftestActs{
    "open_file",     "socket_connect",   "execve",
    "fork",          "ptrace",           "kill",
    "mprotect_exec", "write_foreign_fd", "copy_thread_open_file",
};
#endif

// Attempts the act; returns only if the kernel let it through (or it failed
// with an errno instead of being stopped), with a description of what happened.
[[nodiscard]] std::string_view attempt_forbidden_act(std::string_view act);

#if defined(__x86_64__)
// getpid() through the 32-bit entry (int 0x80). Shared with the unconfined
// probe (kernel_probe.hpp), so both make exactly the same attempt.
long int80_getpid() noexcept;
#endif

}  // namespace picklejail::sandbox
