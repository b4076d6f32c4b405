#include "sandbox/confine.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/securebits.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "common/error.hpp"
#include "ipc/unique_fd.hpp"
#include "sandbox/worker_fds.hpp"

namespace picklejail::sandbox {
namespace {

[[noreturn]] void refuse(const std::string& step) {
    throw Error(ErrorCode::internal,
                "confinement step failed: " + step + ": " + std::strerror(errno));
}

void set_limit(int resource, std::uint64_t value, const char* name) {
    const rlimit limit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
    if (::setrlimit(resource, &limit) != 0) refuse(name);
}

#ifdef PICKLEJAIL_SANITIZE
// Bytes of address space mapped now (VmSize), read before any confinement
// step closes /proc to us.
std::uint64_t mapped_bytes() {
    const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) refuse("open /proc/self/statm");
    char text[128] = {};
    const ssize_t n = ::read(fd, text, sizeof text - 1);
    ::close(fd);
    if (n <= 0) refuse("read /proc/self/statm");
    return std::strtoull(text, nullptr, 10) * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
#endif

}  // namespace

bool parent_alive(pid_t expected_parent) {
    if (expected_parent != 0) return ::getppid() == expected_parent;
    // In a new PID namespace getppid() is 0 whoever the parent is. The
    // spawner holds the read end of the result pipe until it reaps us: once
    // it is gone, our write end reports POLLERR.
    pollfd result{kResultFd, POLLOUT, 0};
    return ::poll(&result, 1, 0) >= 0 && (result.revents & (POLLERR | POLLNVAL)) == 0;
}

void bind_to_parent(pid_t expected_parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) refuse("PR_SET_PDEATHSIG");
    // The parent may have died before the prctl: then we were reparented.
    if (!parent_alive(expected_parent)) ::_exit(1);
    if (::prctl(PR_SET_DUMPABLE, 0) != 0) refuse("PR_SET_DUMPABLE");
}

void close_extra_fds() {
    if (::syscall(SYS_close_range, kFirstUnusedFd, ~0U, 0) != 0) refuse("close_range");
}

void apply_rlimits(const ConfineOptions& options) {
    set_limit(RLIMIT_CORE, 0, "RLIMIT_CORE");
#ifndef PICKLEJAIL_SANITIZE
    set_limit(RLIMIT_NOFILE, kFirstUnusedFd, "RLIMIT_NOFILE");
#else
    // Room for the pipe UBSan's vptr check opens to probe a vtable (see
    // seccomp_policy.cpp); the fds it uses are closed again at once.
    set_limit(RLIMIT_NOFILE, kFirstUnusedFd + 2, "RLIMIT_NOFILE");
#endif
    set_limit(RLIMIT_NPROC, 0, "RLIMIT_NPROC");
    set_limit(RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK");
    if (options.output_bytes != 0) set_limit(RLIMIT_FSIZE, options.output_bytes, "RLIMIT_FSIZE");
    if (options.cpu_seconds != 0) {
        // Soft limit sends SIGXCPU; the hard limit one second later kills.
        const rlimit cpu{static_cast<rlim_t>(options.cpu_seconds),
                         static_cast<rlim_t>(options.cpu_seconds + 1)};
        if (::setrlimit(RLIMIT_CPU, &cpu) != 0) refuse("RLIMIT_CPU");
    }
#ifndef PICKLEJAIL_SANITIZE
    if (options.address_space_bytes != 0)
        set_limit(RLIMIT_AS, options.address_space_bytes, "RLIMIT_AS");
#else
    // ASan reserved terabytes of shadow and allocator space at startup, all of
    // which RLIMIT_AS counts: cap what the job may map on top of that instead.
    // (Small blocks come from ASan's pre-reserved allocator space and escape
    // this cap; large ones, like every big buffer of a conversion, do not.)
    if (options.address_space_bytes != 0) {
        set_limit(RLIMIT_AS, mapped_bytes() + options.address_space_bytes, "RLIMIT_AS");
    }
#endif
}

void enter_empty_root() {
    // The spawner cloned us into new mount/net/ipc/uts/pid namespaces.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        refuse("make mounts private");
    if (::mount("picklejail", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=4k,mode=0700") != 0) {
        refuse("mount tmpfs");
    }
    if (::mkdir("/tmp/old", 0700) != 0) refuse("mkdir old root");
    if (::syscall(SYS_pivot_root, "/tmp", "/tmp/old") != 0) refuse("pivot_root");
    if (::chdir("/") != 0) refuse("chdir /");
    if (::umount2("/old", MNT_DETACH) != 0) refuse("detach old root");
    if (::rmdir("/old") != 0) refuse("remove old root");
    if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                nullptr) != 0) {
        refuse("remount root read-only");
    }
    if (::sethostname("picklejail", 10) != 0) refuse("sethostname");
}

void drop_to(uid_t uid, gid_t gid, pid_t expected_parent) {
    if (::setgroups(0, nullptr) != 0) refuse("setgroups");
    if (::setresgid(gid, gid, gid) != 0) refuse("setresgid");
    if (::setresuid(uid, uid, uid) != 0) refuse("setresuid");
    // setresuid from root to non-root already clears the effective, permitted and
    // ambient sets; clear them explicitly so a future SECBIT change cannot keep any.
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (::syscall(SYS_capset, &header, data) != 0) refuse("capset");
    if (::setresuid(0, 0, 0) == 0) {
        errno = EPERM;
        refuse("privileges could be regained");
    }
    // Changing credentials cleared the parent-death signal (and dumpable):
    // bind again, and check the spawner did not die in between.
    bind_to_parent(expected_parent);
}

void drop_capabilities() {
    // Locked first, while CAP_SETPCAP is still there: uid 0 in the namespace
    // no longer means capabilities (NOROOT), a uid change cannot restore any
    // (NO_SETUID_FIXUP), and none can be raised into the ambient set.
    constexpr unsigned long kLockedBits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                                          SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                          SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                                          SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if (::prctl(PR_SET_SECUREBITS, kLockedBits, 0, 0, 0) != 0) refuse("PR_SET_SECUREBITS");
    // The bounding set, up to the kernel's last capability (PR_CAPBSET_READ
    // answers EINVAL past it; /proc/sys/kernel/cap_last_cap is gone with the old root).
    for (unsigned long cap = 0; ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
        if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) refuse("PR_CAPBSET_DROP");
    }
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        refuse("PR_CAP_AMBIENT_CLEAR_ALL");
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (::syscall(SYS_capset, &header, data) != 0) refuse("capset");
    // The namespace's own hostname was set with CAP_SYS_ADMIN a moment ago.
    if (::sethostname("picklejail", 10) == 0) {
        errno = EPERM;
        refuse("capabilities survived the drop");
    }
}

void set_no_new_privs() {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) refuse("PR_SET_NO_NEW_PRIVS");
}

bool apply_landlock_deny_all() {
    const long abi =
        ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 1) return false;  // kernel without Landlock: seccomp still denies every path syscall
    landlock_ruleset_attr attr{};
    attr.handled_access_fs =
        LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE |
        LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_REMOVE_DIR |
        LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
        LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |
        LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM;
    const long ruleset = ::syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0) return false;
    const ipc::UniqueFd ruleset_fd(static_cast<int>(ruleset));
    const long rc = ::syscall(SYS_landlock_restrict_self, ruleset_fd.get(), 0);
    if (rc != 0) refuse("landlock_restrict_self");
    return true;
}

}  // namespace picklejail::sandbox
