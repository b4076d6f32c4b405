#include "sandbox/clone_pidfd.hpp"

#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstddef>

namespace picklejail::sandbox {
namespace {

// Set once clone3 has answered ENOSYS: it will not start working later.
std::atomic<bool> clone3_missing{false};

ClonedChild clone3_with_pidfd(std::uint64_t namespace_flags) noexcept {
    int pidfd = -1;
    clone_args args{};
    args.flags = CLONE_PIDFD | namespace_flags;
    args.pidfd = reinterpret_cast<std::uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    const long pid = ::syscall(SYS_clone3, &args, sizeof args);
    if (pid <= 0) return {static_cast<pid_t>(pid), ipc::UniqueFd()};
    return {static_cast<pid_t>(pid), ipc::UniqueFd(pidfd)};
}

#ifndef PICKLEJAIL_SANITIZE
// The spawned child's stack; exec_child and the id-map writes need a few KiB.
constexpr std::size_t kChildStackBytes = std::size_t{256} * 1024;

// The child's stack with a guard page below it. It outlives the child's use
// of it: CLONE_VFORK holds the parent until the child has exec'd or exited.
class ChildStack {
  public:
    ChildStack() noexcept
        : guard_(static_cast<std::size_t>(::getpagesize())), size_(kChildStackBytes + guard_) {
        void* base = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (base == MAP_FAILED) return;
        base_ = static_cast<std::byte*>(base);
        (void)::mprotect(base_, guard_, PROT_NONE);
    }
    ChildStack(const ChildStack&) = delete;
    ChildStack& operator=(const ChildStack&) = delete;
    ~ChildStack() {
        if (base_ != nullptr) (void)::munmap(base_, size_);
    }
    [[nodiscard]] bool ok() const noexcept { return base_ != nullptr; }
    // Stacks grow down on every architecture this builds for.
    [[nodiscard]] void* top() const noexcept { return base_ + size_; }

  private:
    std::size_t guard_;
    std::size_t size_;
    std::byte* base_ = nullptr;
};

#endif

struct SpawnContext {
    ChildMain child_main;
    void* arg;
    sigset_t parent_mask;
};

// In the child, on its own stack, with every signal blocked.
int spawned_child(void* raw) {
    const auto* context = static_cast<const SpawnContext*>(raw);
    // Handlers are the parent's code on the parent's memory: back to the
    // default before any signal can arrive (exec would reset them anyway).
    struct sigaction by_default {};
    by_default.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; ++signal) {
        struct sigaction current {};
        if (::sigaction(signal, nullptr, &current) == 0 && current.sa_handler != SIG_DFL &&
            current.sa_handler != SIG_IGN) {
            (void)::sigaction(signal, &by_default, nullptr);
        }
    }
    (void)::sigprocmask(SIG_SETMASK, &context->parent_mask, nullptr);
    return context->child_main(context->arg);
}

}  // namespace

ClonedChild spawn_with_pidfd(std::uint64_t namespace_flags, ChildMain child_main,
                             void* arg) noexcept {
    // glibc's clone() takes int flags; every CLONE_NEW* flag fits.
    if (namespace_flags > static_cast<std::uint64_t>(INT_MAX)) {
        errno = EINVAL;
        return {};
    }
#ifndef PICKLEJAIL_SANITIZE
    const ChildStack stack;
    if (!stack.ok()) return {};
#endif
    SpawnContext context{child_main, arg, {}};
    sigset_t all{};
    (void)::sigfillset(&all);
    (void)::pthread_sigmask(SIG_BLOCK, &all, &context.parent_mask);
#ifndef PICKLEJAIL_SANITIZE
    int pidfd = -1;
    const int flags =
        CLONE_VM | CLONE_VFORK | CLONE_PIDFD | static_cast<int>(namespace_flags) | SIGCHLD;
    // With CLONE_PIDFD the pidfd comes back through the parent_tid argument.
    const pid_t pid = ::clone(spawned_child, stack.top(), flags, &context, &pidfd);
    ClonedChild child{pid < 0 ? -1 : pid, ipc::UniqueFd(pid < 0 ? -1 : pidfd)};
#else
    ClonedChild child = clone_with_pidfd(namespace_flags);
    if (child.pid == 0) ::_exit(spawned_child(&context));
#endif
    const int error = errno;
    (void)::pthread_sigmask(SIG_SETMASK, &context.parent_mask, nullptr);
    errno = error;
    return child;
}

ClonedChild legacy_clone_with_pidfd(std::uint64_t namespace_flags) noexcept {
    int pidfd = -1;
    const unsigned long flags = CLONE_PIDFD | namespace_flags | SIGCHLD;
    // With CLONE_PIDFD the pidfd comes back through the parent_tid argument,
    // the third on every architecture. The fourth and fifth (child_tid and
    // tls on x86-64, swapped on aarch64 and most others) are unused: zero.
    // A null stack gives the child a copy of ours, as fork does.
#if defined(__s390__) || defined(__CRIS__)
#error "clone takes the stack first here (CLONE_BACKWARDS2): not supported"
#endif
    const long pid = ::syscall(SYS_clone, flags, nullptr, &pidfd, nullptr, nullptr);
    if (pid <= 0) return {static_cast<pid_t>(pid), ipc::UniqueFd()};
    return {static_cast<pid_t>(pid), ipc::UniqueFd(pidfd)};
}

ClonedChild clone_with_pidfd(std::uint64_t namespace_flags) noexcept {
    if (!clone3_missing.load(std::memory_order_relaxed)) {
        ClonedChild child = clone3_with_pidfd(namespace_flags);
        if (child.pid >= 0 || errno != ENOSYS) return child;
        clone3_missing.store(true, std::memory_order_relaxed);
    }
    return legacy_clone_with_pidfd(namespace_flags);
}

}  // namespace picklejail::sandbox
