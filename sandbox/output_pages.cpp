#include "sandbox/output_pages.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"

namespace picklejail::sandbox {
namespace {

// The kernel's page size (4, 16 or 64 KiB on aarch64); glibc has it from the
// auxiliary vector, so reading it makes no system call.
const std::uint64_t kPage = static_cast<std::uint64_t>(::getpagesize());

// MADV_POPULATE_WRITE over the whole pages under [data, data + length):
// 0, or the errno it ended with. Interrupted calls are repeated.
int populate_pages(std::byte* data, std::uint64_t length) {
    const auto address = reinterpret_cast<std::uintptr_t>(data);
    const std::uintptr_t first = address / kPage * kPage;
    const std::uintptr_t last = (address + length + kPage - 1) / kPage * kPage;
    for (;;) {
        // NOLINTNEXTLINE(performance-no-int-to-ptr): pages of our own mapping
        if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_WRITE) == 0)
            return 0;
        if (errno != EINTR && errno != EAGAIN) return errno;
    }
}

[[noreturn]] void allocation_failed(int error) {
    // EFAULT: a page fault would have raised SIGBUS (the file system is full).
    throw Error(ErrorCode::io_error, std::string("cannot allocate the output's pages (") +
                                         std::strerror(error) +
                                         "): its file system or the worker's memory limit is full");
}

}  // namespace

OutputPages::OutputPages(int fd, std::span<std::byte> out) : out_(out) {
    if (out_.empty()) return;
    const int error = populate_pages(out_.data(), 1);
    if (error == EINVAL) {  // before Linux 5.14: no MADV_POPULATE_WRITE
        checked_ = false;
        ipc::reserve_output(fd, out_.size(), "output");
    } else if (error != 0) {
        allocation_failed(error);
    }
}

void OutputPages::populate(std::uint64_t offset, std::uint64_t length) const {
    if (length == 0 || !checked_) return;  // unchecked: the kernel has no such call
    if (const int error = populate_pages(out_.data() + offset, length); error != 0)
        allocation_failed(error);
}

}  // namespace picklejail::sandbox
