#include "sandbox/kernel_probe.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>

#include "common/error.hpp"
#include "sandbox/selftest_acts.hpp"

namespace picklejail::sandbox {

Ia32Entry probe_ia32_entry() {
#if defined(__x86_64__)
    const pid_t pid = ::fork();
    if (pid < 0) {
        throw Error(ErrorCode::internal,
                    std::string("cannot probe the 32-bit entry: fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
        // Only async-signal-safe calls between fork and _exit. The caller's
        // own SIGSEGV handler (a test framework's, say) must not catch the fault.
        (void)::signal(SIGSEGV, SIG_DFL);
        ::_exit(int80_getpid() > 0 ? 0 : 1);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            throw Error(
                ErrorCode::internal,
                std::string("cannot probe the 32-bit entry: waitpid: ") + std::strerror(errno));
    }
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV ? Ia32Entry::absent
                                                              : Ia32Entry::present;
#else
    return Ia32Entry::not_applicable;
#endif
}

std::string_view to_string(Ia32Entry entry) noexcept {
    switch (entry) {
        case Ia32Entry::present:
            return "present";
        case Ia32Entry::absent:
            return "absent";
        case Ia32Entry::not_applicable:
            return "not applicable";
    }
    return "unknown";
}

}  // namespace picklejail::sandbox
