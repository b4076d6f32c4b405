// Named POSIX shared memory (Boost.Interprocess) for clients that cannot
// receive file descriptors: /dev/shm/<name>, mode 0600, owned by the caller.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "ipc/unique_fd.hpp"

namespace picklejail::ipc {

// A shared-memory object this process created and filled. Removing it (or
// destroying it) unlinks the name and, if its owner gave the object another
// name meanwhile, empties it: the bytes never outlive their accounting.
class SharedMemoryObject {
  public:
    // Creates `name` (no '/') 0600 and owned by this process, copies `size`
    // bytes of `source_fd` into it with sendfile (never through a mapping:
    // no memory of ours can be shrunk under us), and only then gives it to
    // uid:gid. Blocking; run off the event loop. Throws Error(io_error | denied).
    SharedMemoryObject(std::string name, int source_fd, std::uint64_t size, uid_t uid, gid_t gid);
    SharedMemoryObject(const SharedMemoryObject&) = delete;
    SharedMemoryObject& operator=(const SharedMemoryObject&) = delete;
    ~SharedMemoryObject();

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    [[nodiscard]] std::string path() const { return "/dev/shm/" + name_; }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

  private:
    void remove() noexcept;
    std::string name_;
    std::uint64_t size_;
    UniqueFd fd_;  // read-write: lets us empty the object whatever its name
};

// True when /dev/shm/<name> exists (for tests and stats).
[[nodiscard]] bool shared_memory_exists(const std::string& name);

}  // namespace picklejail::ipc
