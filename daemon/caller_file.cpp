#include "daemon/caller_file.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/error.hpp"

namespace picklejail::daemon {
namespace {

// Switches this thread's filesystem identity to the caller's and back. The
// raw syscalls act on the calling thread only (glibc's wrappers for
// setgroups would change every thread).
class CallerFsIdentity {
  public:
    explicit CallerFsIdentity(const ipc::PeerCredentials& caller) {
        const int count = ::getgroups(0, nullptr);
        saved_groups_.resize(static_cast<std::size_t>(std::max(count, 0)));
        if (count > 0 && ::getgroups(count, saved_groups_.data()) != count) fail("getgroups");
        if (::syscall(SYS_setgroups, caller.groups.size(), caller.groups.data()) != 0)
            fail("setgroups");
        (void)::syscall(SYS_setfsgid, caller.gid);
        (void)::syscall(SYS_setfsuid, caller.uid);
        // Both calls report the previous value, so a second call confirms the switch.
        if (::syscall(SYS_setfsgid, caller.gid) != static_cast<long>(caller.gid) ||
            ::syscall(SYS_setfsuid, caller.uid) != static_cast<long>(caller.uid)) {
            restore();
            throw Error(ErrorCode::internal, "cannot take the caller's filesystem identity");
        }
    }
    CallerFsIdentity(const CallerFsIdentity&) = delete;
    CallerFsIdentity& operator=(const CallerFsIdentity&) = delete;
    ~CallerFsIdentity() { restore(); }

  private:
    // A thread that kept a caller's identity would open the next caller's
    // files as the wrong user: if the way back fails, stop the daemon.
    void restore() noexcept {
        const uid_t uid = ::geteuid();
        const gid_t gid = ::getegid();
        (void)::syscall(SYS_setfsuid, uid);
        (void)::syscall(SYS_setfsgid, gid);
        const bool restored =
            ::syscall(SYS_setfsuid, uid) == static_cast<long>(uid) &&
            ::syscall(SYS_setfsgid, gid) == static_cast<long>(gid) &&
            ::syscall(SYS_setgroups, saved_groups_.size(), saved_groups_.data()) == 0;
        if (!restored) {
            (void)std::fputs("picklejaild: cannot restore the daemon's filesystem identity\n",
                             stderr);
            std::abort();
        }
    }
    [[noreturn]] static void fail(const char* what) {
        throw Error(ErrorCode::internal, std::string(what) + ": " + std::strerror(errno));
    }
    std::vector<gid_t> saved_groups_;
};

// Kernel-made files are never checkpoints; refusing them also keeps /proc
// entries that describe the daemon itself out of reach.
void refuse_pseudo_filesystems(int fd, const std::string& path) {
    struct statfs fs {};
    if (::fstatfs(fd, &fs) != 0)
        throw Error(ErrorCode::io_error, "fstatfs " + path + ": " + std::strerror(errno));
    if (fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC)
        throw Error(ErrorCode::denied, path + " is a /proc or /sys file, not a checkpoint");
}

// Resolved as the caller would resolve it, never through a magic link
// (/proc/self/fd/N, /dev/fd/N, /proc/<pid>/root): those would name the
// daemon's own descriptors, which may belong to other users' requests.
ipc::UniqueFd open_path(const std::string& path) {
    open_how how{};
    how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    how.resolve = RESOLVE_NO_MAGICLINKS;
    ipc::UniqueFd fd(
        static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
    if (fd) {
        refuse_pseudo_filesystems(fd.get(), path);
        return fd;
    }
    const int error = errno;
    switch (error) {
        case EACCES:
        case EPERM:
            throw Error(ErrorCode::denied, "you may not read " + path);
        case ELOOP:
            throw Error(ErrorCode::denied,
                        path +
                            " resolves through a /proc magic link (such as /proc/self/fd/N) or "
                            "too many symbolic links; pass the file by fd instead");
        case ENOSYS:
            throw Error(ErrorCode::denied,
                        "this kernel has no openat2 (Linux 5.6+), so the daemon cannot open "
                        "paths safely; pass the file by fd instead");
        default:
            throw Error(ErrorCode::io_error, "cannot open " + path + ": " + std::strerror(error));
    }
}

}  // namespace

ipc::UniqueFd open_as_caller(const std::string& path, const ipc::PeerCredentials& caller) {
    if (::geteuid() != 0) {
        if (caller.uid != ::geteuid()) {
            throw Error(ErrorCode::denied,
                        "this daemon is unprivileged and opens paths only for its own uid; pass "
                        "the file by fd instead");
        }
        return open_path(path);
    }
    const CallerFsIdentity as_caller(caller);
    return open_path(path);
}

FileIdentity readable_file_identity(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        throw Error(ErrorCode::io_error, std::string("fstat: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        throw Error(ErrorCode::io_error, "the checkpoint is not a regular file");
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH) != 0)
        throw Error(ErrorCode::denied, "the checkpoint's fd is not open for reading");
    return FileIdentity{static_cast<std::uint64_t>(st.st_dev),
                        static_cast<std::uint64_t>(st.st_ino),
                        static_cast<std::uint64_t>(st.st_size),
                        st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
                        st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec};
}

nlohmann::json to_json(const FileIdentity& identity) {
    return {{"dev", identity.device},
            {"ino", identity.inode},
            {"size", identity.size},
            {"mtime_ns", identity.mtime_ns}};
}

}  // namespace picklejail::daemon
