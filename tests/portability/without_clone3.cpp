// without_clone3 COMMAND [ARG...]: runs COMMAND with clone3 answering ENOSYS,
// as Docker's, podman's and containerd's default seccomp profiles do, so
// tests can show that picklejail still starts its workers there.
#include <sys/syscall.h>

#include "filtered_exec.hpp"

int main(int argc, char** argv) {
    return portability::exec_filtered(
        "without_clone3", argc, argv,
        [](scmp_filter_ctx ctx) {
            return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
        },
        // clone3 with a null argument is EFAULT or EINVAL from the kernel,
        // ENOSYS only from the filter.
        [] { return ::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS; });
}
