// Sealed memfds: the worker writes the image into one, the parent seals it
// after the worker is gone, and every receiver checks the seals before it
// trusts that the bytes cannot change under it.
#pragma once

#include <cstdint>

#include "ipc/unique_fd.hpp"

namespace picklejail::ipc {

inline constexpr unsigned kImageSeals =
    0x0001 | 0x0002 | 0x0004 | 0x0008;  // SEAL|SHRINK|GROW|WRITE

[[nodiscard]] UniqueFd create_image_memfd(const char* name);
// Adds F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL; throws io_error.
void seal_image(int fd);
// True when `fd` carries exactly the image seals.
[[nodiscard]] bool is_sealed_image(int fd) noexcept;
[[nodiscard]] bool is_memfd(int fd) noexcept;

}  // namespace picklejail::ipc
