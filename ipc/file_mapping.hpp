// RAII memory mappings and the file operations around them: the input is
// mapped read-only, outputs are sized up front and written through a shared
// mapping, so tensor bytes move once from input pages to output pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "ipc/unique_fd.hpp"

namespace picklejail::ipc {

class Mapping {
  public:
    Mapping() noexcept = default;
    Mapping(void* address, std::size_t size) noexcept : address_(address), size_(size) {}
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    Mapping(Mapping&& other) noexcept;
    Mapping& operator=(Mapping&& other) noexcept;
    ~Mapping();

    [[nodiscard]] std::span<std::byte> bytes() const noexcept {
        return {static_cast<std::byte*>(address_), size_};
    }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    void reset() noexcept;

  private:
    void* address_ = nullptr;
    std::size_t size_ = 0;
};

// Opens `path` read-only (O_NOFOLLOW is not used: users pass symlinked paths).
// Throws Error(io_error) naming the path.
[[nodiscard]] UniqueFd open_read_only(const std::string& path);

// Size of a regular file; throws io_error for anything else.
[[nodiscard]] std::uint64_t regular_file_size(int fd, const std::string& what);

// Maps a whole regular file read-only (empty files give an empty mapping).
[[nodiscard]] Mapping map_read_only(int fd, std::uint64_t size, const std::string& what);

// Sizes `fd` to `size` (ftruncate) and maps it shared and writable. Its pages
// are not allocated yet: see reserve_output and sandbox/output_pages.hpp.
[[nodiscard]] Mapping map_output(int fd, std::uint64_t size, const std::string& what);

// Allocates the first `size` bytes of `fd` now (fallocate), so that a full
// file system fails here rather than as SIGBUS on a write through a mapping.
// A file system without fallocate (ext2, older NFS, some FUSE) is left as
// ftruncate sized it. Throws io_error.
void reserve_output(int fd, std::uint64_t size, const std::string& what);

}  // namespace picklejail::ipc
