#include "sandbox/user_namespace.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string_view>

#include "sandbox/clone_pidfd.hpp"

namespace picklejail::sandbox {
namespace {

// How the probe child says which step the kernel refused (its exit status).
enum ProbeStep : int {
    kProbeOk = 0,
    kProbeIdMaps = 10,
    kProbePrivateMounts = 11,
    kProbeMountTmpfs = 12,
    kProbeHostname = 13,
};

// A sysctl's first line, or "" when the file is absent (the kernel lacks it).
std::string read_sysctl(const char* path) {
    std::ifstream in(path);
    std::string value;
    std::getline(in, value);
    return value;
}

std::string errno_text(int error) {
    const char* name = ::strerrorname_np(error);
    return std::string(std::strerror(error)) + " (" + (name ? name : "?") + ")";
}

// Ubuntu 23.10+ lets anyone create a user namespace but, with this switch on,
// gives the creator no capabilities in it unless an AppArmor profile allows.
std::string lsm_hint() {
    if (read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1")
        return "; kernel.apparmor_restrict_unprivileged_userns is 1";
    return {};
}

// Writes all of `text` to `path`, in the child between clone and exec, which
// shares the parent's memory there: nothing here may allocate.
bool write_whole(const char* path, std::string_view text) noexcept {
    const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const ssize_t n = ::write(fd, text.data(), text.size());
    ::close(fd);
    return n == static_cast<ssize_t>(text.size());
}

// The child's half of the probe: what a worker will need its namespaces for.
[[noreturn]] void probe_child(const IdMaps& maps) noexcept {
    if (!enter_id_maps(maps)) ::_exit(kProbeIdMaps);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        ::_exit(kProbePrivateMounts);
    // Its own mount namespace: the tmpfs vanishes with the child.
    if (::mount("picklejail-probe", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k") !=
        0) {
        ::_exit(kProbeMountTmpfs);
    }
    if (::sethostname("picklejail", 10) != 0) ::_exit(kProbeHostname);
    ::_exit(kProbeOk);
}

}  // namespace

std::uint64_t user_namespace_clone_flags() noexcept {
    return CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID;
}

IdMaps caller_id_maps() {
    return {"0 " + std::to_string(::geteuid()) + " 1\n",
            "0 " + std::to_string(::getegid()) + " 1\n"};
}

bool enter_id_maps(const IdMaps& maps) noexcept {
    return write_whole("/proc/self/setgroups", "deny") &&
           write_whole("/proc/self/uid_map", maps.uid_map) &&
           write_whole("/proc/self/gid_map", maps.gid_map);
}

UserNamespaceSupport probe_user_namespaces() {
    // Debian and Ubuntu kernels before 6.x (and some hardened ones) have this switch.
    if (read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0") {
        return {false,
                "kernel.unprivileged_userns_clone is 0: unprivileged user namespaces are "
                "switched off"};
    }
    if (read_sysctl("/proc/sys/user/max_user_namespaces") == "0") {
        return {false, "user.max_user_namespaces is 0: no user namespace may be created"};
    }
    const IdMaps maps = caller_id_maps();
    ClonedChild child = clone_with_pidfd(user_namespace_clone_flags());
    if (child.pid < 0) {
        const int error = errno;
        return {false,
                "creating a user namespace with mount, network, IPC, UTS and PID namespaces "
                "fails: " +
                    errno_text(error) +
                    (error == EPERM ? " (a seccomp profile or an LSM refuses it)" : "") +
                    lsm_hint()};
    }
    if (child.pid == 0) probe_child(maps);
    int status = 0;
    while (::waitpid(child.pid, &status, 0) < 0) {
        if (errno != EINTR) return {false, "waiting for the probe child: " + errno_text(errno)};
    }
    if (!WIFEXITED(status)) return {false, "the user namespace probe child died by a signal"};
    switch (WEXITSTATUS(status)) {
        case kProbeOk:
            return {true, ""};
        case kProbeIdMaps:
            return {false, "a new user namespace's uid/gid maps cannot be written" + lsm_hint()};
        case kProbePrivateMounts:
        case kProbeMountTmpfs:
            return {false,
                    "mounting inside a new user namespace is refused (no capabilities there)" +
                        lsm_hint()};
        case kProbeHostname:
            return {false,
                    "setting the hostname inside a new user namespace is refused" + lsm_hint()};
        default:
            return {false, "the user namespace probe child exited with status " +
                               std::to_string(WEXITSTATUS(status))};
    }
}

const UserNamespaceSupport& user_namespace_support() {
    static const UserNamespaceSupport support = probe_user_namespaces();
    return support;
}

}  // namespace picklejail::sandbox
