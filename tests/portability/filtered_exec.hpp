// What the portability harnesses share: run a command under one more seccomp
// filter (default allow) that makes a system call answer as some hosts do,
// after checking the filter really took. libseccomp sets no_new_privs, so
// this works unprivileged.
#pragma once

#include <seccomp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace portability {

inline int fail(const char* harness, const char* what, int error) {
    (void)std::fprintf(stderr, "%s: %s: %s\n", harness, what, std::strerror(error));
    return 125;
}

// `add_rules(ctx)` adds the rules (0 or a negative errno); `still_reaches_kernel()`
// says, after loading, whether the filtered call got past it. Execs argv[1..];
// returns 125 on any failure.
template <typename AddRules, typename StillReachesKernel>
int exec_filtered(const char* harness, int argc, char** argv, AddRules add_rules,
                  StillReachesKernel still_reaches_kernel) {
    if (argc < 2) {
        (void)std::fprintf(stderr, "usage: %s COMMAND [ARG...]\n", harness);
        return 125;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == nullptr) return fail(harness, "seccomp_init", ENOMEM);
    int rc = add_rules(ctx);
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) return fail(harness, "cannot load the filter", -rc);
    if (still_reaches_kernel()) return fail(harness, "the call still reaches the kernel", errno);
    ::execvp(argv[1], argv + 1);
    return fail(harness, argv[1], errno);
}

}  // namespace portability
