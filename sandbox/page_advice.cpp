#include "sandbox/page_advice.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace picklejail::sandbox {
namespace {

const std::uint64_t kPage = static_cast<std::uint64_t>(::getpagesize());

}  // namespace

std::uint64_t page_size() noexcept {
    return kPage;
}

int advise_whole_pages(const std::byte* data, std::uint64_t length, int advice) noexcept {
    const auto address = reinterpret_cast<std::uintptr_t>(data);
    const std::uintptr_t first = address / kPage * kPage;
    const std::uintptr_t last = (address + length + kPage - 1) / kPage * kPage;
    for (;;) {
        // NOLINTNEXTLINE(performance-no-int-to-ptr): pages of our own mappings
        if (::madvise(reinterpret_cast<void*>(first), last - first, advice) == 0) return 0;
        if (errno != EINTR && errno != EAGAIN) return errno;
    }
}

}  // namespace picklejail::sandbox
