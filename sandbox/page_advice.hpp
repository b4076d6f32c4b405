// madvise over whole pages of the worker's own mappings, shared by the image
// writer (releasing copied pages) and OutputPages (populating them).
#pragma once

#include <cstddef>
#include <cstdint>

namespace picklejail::sandbox {

// The kernel's page size: 4 KiB on x86-64, but 4, 16 or 64 KiB on aarch64
// (64 KiB kernels are common on Grace hosts), and madvise refuses a range
// that does not start on one. glibc keeps it from the auxiliary vector, so
// reading it makes no system call (it is read before the filter anyway).
[[nodiscard]] std::uint64_t page_size() noexcept;

// madvise(`advice`) over the whole pages under [data, data + length): 0, or
// the errno it ended with. Interrupted calls are repeated.
[[nodiscard]] int advise_whole_pages(const std::byte* data, std::uint64_t length,
                                     int advice) noexcept;

}  // namespace picklejail::sandbox
