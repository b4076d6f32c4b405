// Starts a child process with a pidfd, in new namespaces when asked: clone3
// where the kernel or an outer seccomp profile allows it, else clone with
// CLONE_PIDFD. Docker, podman and containerd's default profiles answer
// clone3 with ENOSYS (so that glibc falls back), which would otherwise leave
// a containerised picklejail unable to start any worker.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "ipc/unique_fd.hpp"

namespace picklejail::sandbox {

struct ClonedChild {
    pid_t pid = -1;  // 0 in the child
    ipc::UniqueFd pidfd;
};

// Like fork(): returns twice, with pid 0 in the child, which must only make
// async-signal-safe calls before exec or _exit. `namespace_flags` are
// CLONE_NEW* flags; SIGCHLD is the exit signal. On failure pid is -1 and
// errno says why (the clone's errno when it was tried).
[[nodiscard]] ClonedChild clone_with_pidfd(std::uint64_t namespace_flags) noexcept;

// What runs in a spawned child: it must make only async-signal-safe calls
// and end in execve or _exit (its return value becomes the exit status).
using ChildMain = int (*)(void* arg);

// Starts `child_main(arg)` in a child that shares this process's memory until
// it execs or exits (CLONE_VM | CLONE_VFORK, as posix_spawn does), on a stack
// of its own, in new namespaces when asked; this thread waits until then.
// A fork-style clone copies the page tables and leaves every private page
// copy-on-write, so the daemon took a fault on each page it wrote after each
// spawn (~1,700 per 20,000-tensor job: about a fifth of its time on it).
// Signals are blocked around the clone, and the child resets every handler
// to the default before it restores the mask, so no handler of ours runs on
// the shared memory. With the sanitizers (which cannot follow a CLONE_VM
// child's stack) it is clone_with_pidfd() plus the call. On failure pid is -1
// and errno says why.
[[nodiscard]] ClonedChild spawn_with_pidfd(std::uint64_t namespace_flags, ChildMain child_main,
                                           void* arg) noexcept;

// clone with CLONE_PIDFD (Linux 5.2), never clone3: what clone_with_pidfd
// does once clone3 has answered ENOSYS. Exposed for tests.
[[nodiscard]] ClonedChild legacy_clone_with_pidfd(std::uint64_t namespace_flags) noexcept;

}  // namespace picklejail::sandbox
