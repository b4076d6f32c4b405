#include "ipc/memfd.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.hpp"

namespace picklejail::ipc {

static_assert(kImageSeals == (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE));

UniqueFd create_image_memfd(const char* name) {
    UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) throw Error(ErrorCode::io_error, std::string("memfd_create: ") + std::strerror(errno));
    return fd;
}

void seal_image(int fd) {
    if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        throw Error(ErrorCode::io_error,
                    std::string("cannot seal the output memfd: ") + std::strerror(errno));
    }
}

bool is_sealed_image(int fd) noexcept {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (static_cast<unsigned>(seals) & kImageSeals) == kImageSeals;
}

bool is_memfd(int fd) noexcept {
    // tmpfs files opened by path (/dev/shm/x) answer F_GET_SEALS too, with
    // F_SEAL_SEAL already set; only a memfd made to be sealed lacks it.
    const int seals = ::fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (static_cast<unsigned>(seals) & F_SEAL_SEAL) == 0;
}

}  // namespace picklejail::ipc
