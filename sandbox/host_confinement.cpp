#include "sandbox/host_confinement.hpp"

#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "sandbox/kernel_probe.hpp"
#include "sandbox/spawner.hpp"
#include "sandbox/user_namespace.hpp"

namespace picklejail::sandbox {
namespace {

using nlohmann::json;

std::string errno_text(int error) {
    return std::string(::strerrordesc_np(error) ? ::strerrordesc_np(error) : "unknown") + " (" +
           (::strerrorname_np(error) ? ::strerrorname_np(error) : "?") + ")";
}

const char* architecture() {
#if defined(__x86_64__)
    return "x86_64";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "other";
#endif
}

json namespaces(bool root, const UserNamespaceSupport& userns) {
    if (root) return {{"applied", true}, {"kinds", {"mount", "network", "ipc", "uts", "pid"}}};
    if (userns.usable) {
        return {{"applied", true},
                {"kinds", {"user", "mount", "network", "ipc", "uts", "pid"}},
                {"note", "not root: in a user namespace mapping only the caller's uid and gid"}};
    }
    return {{"applied", false},
            {"reason",
             "not root, and no user namespace: workers share the caller's namespaces "
             "and root: " +
                 userns.reason}};
}

json uid_drop(bool root, const UserNamespaceSupport& userns) {
    if (!root && userns.usable) {
        return {{"applied", false},
                {"reason",
                 "not root: workers keep the caller's uid (0 in their user namespace, "
                 "with every capability dropped and securebits locked)"}};
    }
    if (!root) return {{"applied", false}, {"reason", "not root: workers keep the caller's uid"}};
    const auto id = worker_identity();
    return {{"applied", true}, {"uid", id.uid}, {"gid", id.gid}};
}

json landlock() {
    const long abi =
        ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi >= 1) return {{"applied", true}, {"abi", abi}};
    const int error = errno;
    const char* why = error == ENOSYS       ? "the kernel is built without Landlock"
                      : error == EOPNOTSUPP ? "Landlock is not enabled (lsm= boot parameter)"
                                            : "Landlock is unavailable";
    return {{"applied", false},
            {"abi", nullptr},
            {"reason", std::string(why) + ": " + errno_text(error)}};
}

// The Seccomp mode this process already runs under (2: a container's or
// systemd's filter), from /proc/self/status.
int outer_seccomp_mode() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("Seccomp:", 0) == 0) return std::stoi(line.substr(8));
    }
    return -1;
}

json seccomp() {
    // The worker's filter needs RET_TRAP (violation reports) and
    // RET_KILL_PROCESS (foreign architectures).
    json out{{"outer_filter_mode", outer_seccomp_mode()}};
    for (const std::uint32_t action : {SECCOMP_RET_TRAP, SECCOMP_RET_KILL_PROCESS}) {
        std::uint32_t probe = action;
        if (::syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &probe) != 0) {
            out["applied"] = false;
            out["reason"] =
                "the kernel lacks a seccomp action the filter needs: " + errno_text(errno);
            return out;
        }
    }
    out["applied"] = true;
    return out;
}

json ia32_entry() {
    const auto entry = probe_ia32_entry();
    json out{{"state", std::string(to_string(entry))}};
    if (entry == Ia32Entry::present)
        out["note"] = "int 0x80 reaches the i386 table: the filter kills it (bad architecture)";
    if (entry == Ia32Entry::absent)
        out["note"] = "int 0x80 faults before any filter: stopped by the kernel";
    return out;
}

json clone3() {
    // A null argument is refused by the kernel (EFAULT/EINVAL) before any
    // process is made; ENOSYS means an old kernel or an outer filter.
    if (::syscall(SYS_clone3, nullptr, 0) == -1 && errno == ENOSYS)
        return {{"present", false},
                {"reason",
                 "clone3 answers ENOSYS: helper children start through clone, as "
                 "workers always do"}};
    return {{"present", true}};
}

}  // namespace

nlohmann::json describe_host_confinement() {
    const bool root = ::geteuid() == 0;
    // Probed afresh, not the spawner's cached answer: this is the report.
    const UserNamespaceSupport userns = root ? UserNamespaceSupport{} : probe_user_namespaces();
    return {
        {"architecture", architecture()},
        {"running_as_root", root},
        {"namespaces", namespaces(root, userns)},
        {"uid_drop", uid_drop(root, userns)},
        {"no_new_privs", {{"applied", true}}},
        {"landlock", landlock()},
        {"seccomp", seccomp()},
        {"ia32_entry", ia32_entry()},
        {"clone3", clone3()},
    };
}

}  // namespace picklejail::sandbox
