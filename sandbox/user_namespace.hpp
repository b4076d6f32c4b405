// Isolation without root: where the caller is not root but the kernel lets
// unprivileged users create user namespaces, the spawner starts the worker in
// a new user namespace together with new mount, network, IPC, UTS and PID
// namespaces. Owning the user namespace gives the worker the capabilities it
// needs to build its empty root there (and nowhere else), which it then drops
// before its filter (confine.cpp), as bubblewrap and nsjail do.
#pragma once

#include <cstdint>
#include <string>

namespace picklejail::sandbox {

// Every namespace an unprivileged worker is started in.
[[nodiscard]] std::uint64_t user_namespace_clone_flags() noexcept;

struct UserNamespaceSupport {
    bool usable = false;
    std::string reason;  // why not, when !usable
};

// Whether an unprivileged spawner can isolate workers with a user namespace:
// the sysctls that switch the feature off (kernel.unprivileged_userns_clone
// where the kernel has it, user.max_user_namespaces), then a real attempt:
// a short-lived child in the same namespaces as a worker maps its ids and
// mounts a tmpfs, which an LSM (AppArmor's restriction of unprivileged user
// namespaces) or a container's seccomp profile may refuse.
[[nodiscard]] UserNamespaceSupport probe_user_namespaces();
// probe_user_namespaces(), once per process: the answer does not change.
[[nodiscard]] const UserNamespaceSupport& user_namespace_support();

// The maps a new user namespace gets: the caller's own effective uid and gid
// (the only ids an unprivileged process may map) become 0 inside, so the
// worker keeps its capabilities in the namespace across exec. Built before
// clone, since an unmapped child sees its ids as the overflow id.
struct IdMaps {
    std::string uid_map;
    std::string gid_map;
};
[[nodiscard]] IdMaps caller_id_maps();

// In the child, before exec: denies setgroups (required before an
// unprivileged gid_map) and writes both maps to /proc/self. Only
// async-signal-safe calls; false when any write failed.
[[nodiscard]] bool enter_id_maps(const IdMaps& maps) noexcept;

}  // namespace picklejail::sandbox
