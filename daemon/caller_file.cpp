#include "daemon/caller_file.hpp"

#include <fcntl.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
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
        // setfsuid reports the previous value, so confirm the switch took.
        if (::syscall(SYS_setfsuid, caller.uid) != static_cast<long>(caller.uid)) {
            restore();
            throw Error(ErrorCode::internal, "cannot take the caller's filesystem identity");
        }
    }
    CallerFsIdentity(const CallerFsIdentity&) = delete;
    CallerFsIdentity& operator=(const CallerFsIdentity&) = delete;
    ~CallerFsIdentity() { restore(); }

  private:
    void restore() noexcept {
        (void)::syscall(SYS_setfsuid, ::geteuid());
        (void)::syscall(SYS_setfsgid, ::getegid());
        (void)::syscall(SYS_setgroups, saved_groups_.size(), saved_groups_.data());
    }
    [[noreturn]] static void fail(const char* what) {
        throw Error(ErrorCode::internal, std::string(what) + ": " + std::strerror(errno));
    }
    std::vector<gid_t> saved_groups_;
};

ipc::UniqueFd open_path(const std::string& path) {
    ipc::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (fd) return fd;
    const int error = errno;
    if (error == EACCES || error == EPERM) {
        throw Error(ErrorCode::denied, "you may not read " + path);
    }
    throw Error(ErrorCode::io_error, "cannot open " + path + ": " + std::strerror(error));
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
