#include "sandbox/output_pages.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"
#include "ipc/file_mapping.hpp"
#include "sandbox/page_advice.hpp"

namespace picklejail::sandbox {
namespace {

[[noreturn]] void allocation_failed(int error) {
    // EFAULT: a page fault would have raised SIGBUS (the file system is full).
    throw Error(ErrorCode::io_error, std::string("cannot allocate the output's pages (") +
                                         std::strerror(error) +
                                         "): its file system or the worker's memory limit is full");
}

}  // namespace

OutputPages::OutputPages(int fd, std::span<std::byte> out) : out_(out) {
    if (out_.empty()) return;
    const int error = advise_whole_pages(out_.data(), 1, MADV_POPULATE_WRITE);
    if (error == EINVAL) {  // before Linux 5.14: no MADV_POPULATE_WRITE
        checked_ = false;
        ipc::reserve_output(fd, out_.size(), "output");
    } else if (error != 0) {
        allocation_failed(error);
    }
}

void OutputPages::populate(std::uint64_t offset, std::uint64_t length) const {
    if (length == 0 || !checked_) return;  // unchecked: the kernel has no such call
    if (const int error = advise_whole_pages(out_.data() + offset, length, MADV_POPULATE_WRITE);
        error != 0)
        allocation_failed(error);
}

}  // namespace picklejail::sandbox
