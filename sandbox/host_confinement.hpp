// What confinement this host gives a worker, and why any part is missing:
// namespaces, uid drop, no_new_privs, Landlock, seccomp, the 32-bit entry,
// clone3. For `picklejail selftest` (printed before the acts) and for the
// daemon to log at start and return from `stats`.
#pragma once

#include <nlohmann/json.hpp>

namespace picklejail::sandbox {

// Probes the kernel from the calling process (an unconfined child for the
// 32-bit entry; read-only queries otherwise) for a spawner with the default
// SpawnOptions (isolate = true). Object keys: architecture, running_as_root,
// namespaces, uid_drop, no_new_privs, landlock, seccomp, ia32_entry, clone3;
// each part has "applied" (or "present") and, when false, "reason". Not
// root, namespaces are applied through a user namespace where the host
// allows one, and their reason says why not where it does not.
[[nodiscard]] nlohmann::json describe_host_confinement();

}  // namespace picklejail::sandbox
