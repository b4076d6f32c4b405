#include "sandbox/clone_pidfd.hpp"

#include <linux/sched.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>

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

}  // namespace

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
