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

// clone with CLONE_PIDFD (Linux 5.2), never clone3: what clone_with_pidfd
// does once clone3 has answered ENOSYS. Exposed for tests.
[[nodiscard]] ClonedChild legacy_clone_with_pidfd(std::uint64_t namespace_flags) noexcept;

}  // namespace picklejail::sandbox
