// without_populate_write COMMAND [ARG...]: runs COMMAND with
// madvise(MADV_POPULATE_WRITE) answering EINVAL, as kernels before 5.14 do,
// so tests can show that a worker there reserves its output with fallocate
// and still fails cleanly on a full file system.
#include <sys/mman.h>

#include "filtered_exec.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

// On a page of our own the call succeeds unless the filter answers it.
bool populate_reaches_kernel() {
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return true;  // reported with mmap's errno
    const bool reached = ::madvise(page, 4096, MADV_POPULATE_WRITE) != -1 || errno != EINVAL;
    const int error = errno;
    ::munmap(page, 4096);
    errno = error;
    return reached;
}

}  // namespace

int main(int argc, char** argv) {
    return portability::exec_filtered(
        "without_populate_write", argc, argv,
        [](scmp_filter_ctx ctx) {
            return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EINVAL), SCMP_SYS(madvise), 1,
                                    SCMP_A2(SCMP_CMP_EQ, MADV_POPULATE_WRITE));
        },
        populate_reaches_kernel);
}
