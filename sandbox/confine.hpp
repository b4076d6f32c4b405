// The worker's confinement steps, in the order nsjail and sandbox2 use them.
// Each step throws Error(internal) when the kernel refuses something that
// must succeed; optional hardening (Landlock) reports whether it applied.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace picklejail::sandbox {

struct ConfineOptions {
    pid_t expected_parent = 0;
    std::uint64_t address_space_bytes = 0;  // RLIMIT_AS; 0 = leave unset
    std::uint64_t cpu_seconds = 0;          // RLIMIT_CPU; 0 = leave unset
    std::uint64_t output_bytes = 0;         // RLIMIT_FSIZE
    bool drop_privileges = false;           // only when started as root
    bool user_namespace = false;            // started in a new user namespace (not root)
    uid_t uid = 65534;
    gid_t gid = 65534;
};

struct ConfineReport {
    bool namespaces = false;
    bool landlock = false;
};

// Dies with the parent (`expected_parent`, or 0 in a new PID namespace, where
// the result pipe tells whether the spawner still lives), and closes every fd
// above the fixed ones.
[[nodiscard]] bool parent_alive(pid_t expected_parent);
void bind_to_parent(pid_t expected_parent);
void close_extra_fds();
void apply_rlimits(const ConfineOptions& options);
// As root, or in a user namespace (the spawner created new namespaces): an
// empty read-only root. Then, as root: setgroups/setresgid/setresuid to the
// unprivileged ids, every capability gone, and bound to the parent again (the
// credential change cleared that).
void enter_empty_root();
void drop_to(uid_t uid, gid_t gid, pid_t expected_parent);
// In a user namespace the worker owns (not root): its only mapped uid is 0,
// so there is no uid to switch to. Instead every capability goes, from every
// set including the bounding set, and securebits are locked so that uid 0
// can never give them back; checked by a privileged call that must now fail.
void drop_capabilities();
void set_no_new_privs();
[[nodiscard]] bool apply_landlock_deny_all();

}  // namespace picklejail::sandbox
