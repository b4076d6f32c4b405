// without_clone3 COMMAND [ARG...]: runs COMMAND with clone3 answering ENOSYS,
// as Docker's, podman's and containerd's default seccomp profiles do, so
// tests can show that picklejail still starts its workers there.
#include <seccomp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace {

int fail(const char* what, int error) {
    (void)std::fprintf(stderr, "without_clone3: %s: %s\n", what, std::strerror(error));
    return 125;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        (void)std::fprintf(stderr, "usage: without_clone3 COMMAND [ARG...]\n");
        return 125;
    }
    // Default allow; libseccomp sets no_new_privs, so this works unprivileged.
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == nullptr) return fail("seccomp_init", ENOMEM);
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) return fail("cannot load the filter", -rc);
    // The filter must have taken: clone3 with a null argument is EFAULT or
    // EINVAL from the kernel, ENOSYS only from the filter.
    if (::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS)
        return fail("clone3 still reaches the kernel", errno);
    ::execvp(argv[1], argv + 1);
    return fail(argv[1], errno);
}
