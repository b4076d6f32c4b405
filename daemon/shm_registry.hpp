// Named shared-memory images handed to callers (the `shm` transport): who
// owns each, how many bytes each uid holds, and removal on release or TTL.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "ipc/shared_memory.hpp"

namespace picklejail::daemon {

class ShmRegistry {
  public:
    ShmRegistry(boost::asio::io_context& io, std::chrono::seconds ttl,
                std::uint64_t max_bytes_per_uid);
    ShmRegistry(const ShmRegistry&) = delete;
    ShmRegistry& operator=(const ShmRegistry&) = delete;

    // Throws Error(busy) when `uid` already holds its quota.
    void check_quota(uid_t uid, std::uint64_t more_bytes) const;
    // Copies `image` into a new object owned by uid:gid; returns its name.
    // Throws Error(busy) over quota, Error(io_error | denied) on failure.
    [[nodiscard]] std::string publish(uid_t uid, gid_t gid, std::span<const std::byte> image);
    // Removes `name` for its owner. Throws Error(invalid_request | denied).
    void release(uid_t uid, const std::string& name);
    // Removes every object (shutdown).
    void clear();

    [[nodiscard]] std::chrono::seconds ttl() const noexcept { return ttl_; }
    [[nodiscard]] std::size_t count() const noexcept { return entries_.size(); }
    [[nodiscard]] std::uint64_t total_bytes() const noexcept;
    [[nodiscard]] std::uint64_t bytes_held(uid_t uid) const;

  private:
    struct Entry {
        uid_t owner;
        std::unique_ptr<ipc::SharedMemoryObject> object;
        std::unique_ptr<boost::asio::steady_timer> expiry;
    };
    boost::asio::io_context& io_;
    std::chrono::seconds ttl_;
    std::uint64_t max_bytes_per_uid_;
    std::map<std::string, Entry> entries_;
};

}  // namespace picklejail::daemon
