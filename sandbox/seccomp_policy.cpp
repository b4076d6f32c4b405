#include "sandbox/seccomp_policy.hpp"

#include <seccomp.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "common/error.hpp"
#include "sandbox/worker_fds.hpp"

namespace picklejail::sandbox {

struct SeccompFilter::Context {
    scmp_filter_ctx ctx = nullptr;
    ~Context() {
        if (ctx != nullptr) seccomp_release(ctx);
    }
};

namespace {

// int arguments occupy the low 32 bits of a 64-bit register.
constexpr scmp_datum_t kLow32 = 0xffffffffU;

void allow(scmp_filter_ctx ctx, int syscall_nr) {
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, syscall_nr, 0) != 0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add failed");
    }
}

void allow_on_fd(scmp_filter_ctx ctx, int syscall_nr, int fd) {
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, syscall_nr, 1,
                         SCMP_A0(SCMP_CMP_MASKED_EQ, kLow32, static_cast<scmp_datum_t>(fd))) != 0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add failed");
    }
}

void allow_mmap(scmp_filter_ctx ctx, int fd_arg, int flags_required) {
    // Never PROT_EXEC; anonymous private memory (malloc) or the output fd.
    if (seccomp_rule_add(
            ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 3, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),
            SCMP_A3(SCMP_CMP_MASKED_EQ, static_cast<scmp_datum_t>(flags_required),
                    static_cast<scmp_datum_t>(flags_required)),
            SCMP_A4(SCMP_CMP_MASKED_EQ, kLow32, static_cast<scmp_datum_t>(fd_arg) & kLow32)) != 0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add(mmap) failed");
    }
}

}  // namespace

SeccompFilter::SeccompFilter(SeccompFilter&&) noexcept = default;
SeccompFilter& SeccompFilter::operator=(SeccompFilter&&) noexcept = default;
SeccompFilter::~SeccompFilter() = default;

SeccompFilter SeccompFilter::worker_policy() {
    SeccompFilter filter;
    filter.context_ = std::make_unique<Context>();
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
    if (ctx == nullptr) throw Error(ErrorCode::internal, "seccomp_init failed");
    filter.context_->ctx = ctx;
    seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1);
    // Every thread at once (the worker's copy thread, started before the
    // filter: it has no clone); the load fails if one cannot be synced.
    if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0)
        throw Error(ErrorCode::internal, "seccomp: thread synchronisation is unavailable");

    // Input: read/pread on fd 3 only (it is mapped before the filter loads).
    allow_on_fd(ctx, SCMP_SYS(read), kInputFd);
    allow_on_fd(ctx, SCMP_SYS(pread64), kInputFd);
    // Output image and result record.
    allow_on_fd(ctx, SCMP_SYS(ftruncate), kOutputFd);
    allow_on_fd(ctx, SCMP_SYS(fallocate), kOutputFd);
    allow_on_fd(ctx, SCMP_SYS(pwrite64), kOutputFd);
    // Verbatim tensor runs: input fd to output fd inside the kernel.
    allow_on_fd(ctx, SCMP_SYS(lseek), kOutputFd);
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(sendfile), 2,
                         SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(kOutputFd)),
                         SCMP_A1(SCMP_CMP_EQ, static_cast<scmp_datum_t>(kInputFd))) != 0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add(sendfile) failed");
    }
    allow_on_fd(ctx, SCMP_SYS(write), kResultFd);
    allow_mmap(ctx, kOutputFd, MAP_SHARED);
    allow_mmap(ctx, -1, MAP_PRIVATE | MAP_ANONYMOUS);
    // Memory management for malloc and the output mapping.
    allow(ctx, SCMP_SYS(munmap));
    // mimalloc decommits and recommits its own pages; never towards PROT_EXEC.
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
                         SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)) != 0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add(mprotect) failed");
    }
    allow(ctx, SCMP_SYS(brk));
    allow(ctx, SCMP_SYS(mremap));
    allow(ctx, SCMP_SYS(madvise));
    allow(ctx, SCMP_SYS(futex));
#ifdef PICKLEJAIL_SANITIZE
    // Sanitizer builds only. ASan asks for the alternate signal stack
    // (sigaltstack(NULL, &old), a query that changes nothing) before every
    // throw and noreturn call. UBSan's vptr check tests whether a vtable is
    // readable by writing it into a fresh pipe (IsAccessibleMemoryRange):
    // pipe2, write and close, on descriptors above the worker's own.
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(sigaltstack), 1, SCMP_A0(SCMP_CMP_EQ, 0)) !=
        0) {
        throw Error(ErrorCode::internal, "seccomp_rule_add failed");
    }
    allow(ctx, SCMP_SYS(pipe2));
    for (const int syscall_nr : {SCMP_SYS(write), SCMP_SYS(close)}) {
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, syscall_nr, 1,
                             SCMP_A0(SCMP_CMP_GE, static_cast<scmp_datum_t>(kFirstUnusedFd))) !=
            0) {
            throw Error(ErrorCode::internal, "seccomp_rule_add failed");
        }
    }
#endif
    // Leaving.
    allow(ctx, SCMP_SYS(exit_group));
    allow(ctx, SCMP_SYS(exit));
    allow(ctx, SCMP_SYS(rt_sigreturn));
    return filter;
}

void SeccompFilter::load() {
    if (const int rc = seccomp_load(context_->ctx); rc != 0) {
        throw Error(ErrorCode::internal, std::string("seccomp_load failed: ") + std::strerror(-rc));
    }
}

}  // namespace picklejail::sandbox
