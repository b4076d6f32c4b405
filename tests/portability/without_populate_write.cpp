// without_populate_write COMMAND [ARG...]: runs COMMAND with
// madvise(MADV_POPULATE_WRITE) answering EINVAL, as kernels before 5.14 do,
// so tests can show that a worker there reserves its output with fallocate
// and still fails cleanly on a full file system.
#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

int fail(const char* what, int error) {
    (void)std::fprintf(stderr, "without_populate_write: %s: %s\n", what, std::strerror(error));
    return 125;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        (void)std::fprintf(stderr, "usage: without_populate_write COMMAND [ARG...]\n");
        return 125;
    }
    // Default allow; libseccomp sets no_new_privs, so this works unprivileged.
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == nullptr) return fail("seccomp_init", ENOMEM);
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EINVAL), SCMP_SYS(madvise), 1,
                              SCMP_A2(SCMP_CMP_EQ, MADV_POPULATE_WRITE));
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) return fail("cannot load the filter", -rc);
    // The filter must have taken: on a page of our own it would succeed.
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return fail("mmap", errno);
    if (::madvise(page, 4096, MADV_POPULATE_WRITE) != -1 || errno != EINVAL)
        return fail("MADV_POPULATE_WRITE still reaches the kernel", errno);
    ::munmap(page, 4096);
    ::execvp(argv[1], argv + 1);
    return fail(argv[1], errno);
}
