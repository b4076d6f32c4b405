// Named POSIX shared memory (Boost.Interprocess) for clients that cannot
// receive file descriptors: /dev/shm/<name>, mode 0600, owned by the caller.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>

namespace picklejail::ipc {

// A shared-memory object this process created; removed from the namespace
// on destruction (mappings and fds others hold stay valid).
class SharedMemoryObject {
  public:
    // Creates `name` (no '/'), exactly bytes.size() long, holding a copy of
    // `bytes`, owned by uid:gid with mode 0600. Throws Error(io_error).
    SharedMemoryObject(std::string name, std::span<const std::byte> bytes, uid_t uid, gid_t gid);
    SharedMemoryObject(const SharedMemoryObject&) = delete;
    SharedMemoryObject& operator=(const SharedMemoryObject&) = delete;
    ~SharedMemoryObject();

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    [[nodiscard]] std::string path() const { return "/dev/shm/" + name_; }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

  private:
    std::string name_;
    std::uint64_t size_;
};

// True when /dev/shm/<name> exists (for tests and stats).
[[nodiscard]] bool shared_memory_exists(const std::string& name);

}  // namespace picklejail::ipc
