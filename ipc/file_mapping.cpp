#include "ipc/file_mapping.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.hpp"

namespace picklejail::ipc {
namespace {

[[noreturn]] void io_fail(const std::string& what, int err) {
    throw Error(ErrorCode::io_error, what + ": " + std::strerror(err));
}

}  // namespace

Mapping::Mapping(Mapping&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
    if (this != &other) {
        reset();
        address_ = std::exchange(other.address_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

Mapping::~Mapping() {
    reset();
}

void Mapping::reset() noexcept {
    if (address_ != nullptr && size_ != 0) ::munmap(address_, size_);
    address_ = nullptr;
    size_ = 0;
}

UniqueFd open_read_only(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!fd) io_fail("cannot open " + path, errno);
    return fd;
}

std::uint64_t regular_file_size(int fd, const std::string& what) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) io_fail("cannot stat " + what, errno);
    if (!S_ISREG(st.st_mode)) throw Error(ErrorCode::io_error, what + " is not a regular file");
    return static_cast<std::uint64_t>(st.st_size);
}

Mapping map_read_only(int fd, std::uint64_t size, const std::string& what) {
    if (size == 0) return {};
    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) io_fail("cannot map " + what, errno);
    return {address, static_cast<std::size_t>(size)};
}

Mapping map_output(int fd, std::uint64_t size, const std::string& what) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) io_fail("cannot size " + what, errno);
    if (size == 0) return {};
    void* address = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (address == MAP_FAILED) io_fail("cannot map " + what, errno);
    return {address, static_cast<std::size_t>(size)};
}

void reserve_output(int fd, std::uint64_t size, const std::string& what) {
    if (size == 0) return;
    // The raw call, not posix_fallocate: where the filesystem has no fallocate
    // (ext2, older NFS, some FUSE) glibc emulates it with fstatfs, fcntl and
    // pwrite loops the worker's seccomp filter refuses; there the pages are
    // allocated as they are written.
    if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0 && errno != EOPNOTSUPP)
        io_fail("cannot allocate " + what, errno);
}

}  // namespace picklejail::ipc
