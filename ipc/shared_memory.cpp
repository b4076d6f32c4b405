#include "ipc/shared_memory.hpp"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>

#include "common/error.hpp"

namespace picklejail::ipc {
namespace bip = boost::interprocess;
namespace {

UniqueFd create_exclusive(const std::string& name) {
    try {
        bip::permissions owner_only;
        owner_only.set_permissions(0600);
        const bip::shared_memory_object object(bip::create_only, name.c_str(), bip::read_write,
                                               owner_only);
        // Boost closes its handle with the object; we keep our own.
        UniqueFd fd(::fcntl(object.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0));
        if (!fd) throw Error(ErrorCode::io_error, std::string("dup: ") + std::strerror(errno));
        return fd;
    } catch (const bip::interprocess_exception& e) {
        throw Error(ErrorCode::io_error, "cannot create shared memory " + name + ": " + e.what());
    }
}

void copy_from(int source_fd, int target_fd, std::uint64_t size, const std::string& name) {
    off_t offset = 0;
    while (static_cast<std::uint64_t>(offset) < size) {
        const auto left = size - static_cast<std::uint64_t>(offset);
        const ssize_t n =
            ::sendfile(target_fd, source_fd, &offset,
                       static_cast<std::size_t>(std::min<std::uint64_t>(left, 1U << 30)));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            throw Error(ErrorCode::io_error, "cannot fill shared memory " + name + ": " +
                                                 (n == 0 ? "short source" : std::strerror(errno)));
        }
    }
}

}  // namespace

SharedMemoryObject::SharedMemoryObject(std::string name, int source_fd, std::uint64_t size,
                                       uid_t uid, gid_t gid)
    : name_(std::move(name)), size_(size), fd_(create_exclusive(name_)) {
    try {
        copy_from(source_fd, fd_.get(), size, name_);
        // Handed over only when complete: until now the caller cannot open it.
        if (::fchown(fd_.get(), uid, gid) != 0 && !(uid == ::geteuid() && gid == ::getegid())) {
            throw Error(ErrorCode::denied,
                        std::string("cannot give the shared memory to the caller: ") +
                            std::strerror(errno));
        }
    } catch (...) {
        remove();
        throw;
    }
}

SharedMemoryObject::~SharedMemoryObject() {
    remove();
}

void SharedMemoryObject::remove() noexcept {
    struct stat ours {};
    struct stat named {};
    if (::fstat(fd_.get(), &ours) != 0) return;
    const std::string path = "/dev/shm/" + name_;
    // Unlink the name only while it is still ours (its owner may have renamed
    // ours away and put something else there).
    if (::lstat(path.c_str(), &named) == 0 && named.st_dev == ours.st_dev &&
        named.st_ino == ours.st_ino) {
        (void)::unlink(path.c_str());
    }
    // Still linked under another name: empty it, so renaming an object and
    // releasing it does not keep the bytes while freeing the quota.
    if (::fstat(fd_.get(), &ours) == 0 && ours.st_nlink > 0) (void)::ftruncate(fd_.get(), 0);
}

bool shared_memory_exists(const std::string& name) {
    struct stat st {};
    return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

}  // namespace picklejail::ipc
