// Named shared-memory images handed to callers (the `shm` transport): who
// owns each, how many bytes each uid holds (published or being copied), and
// removal on release, at the TTL, at shutdown, and — for a previous run that
// died — at start. Lives on the event loop; the copy itself runs elsewhere.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "ipc/shared_memory.hpp"

namespace picklejail::daemon {

class ShmRegistry {
  public:
    ShmRegistry(boost::asio::io_context& io, std::chrono::seconds ttl,
                std::uint64_t max_bytes_per_uid, std::string prefix);
    ShmRegistry(const ShmRegistry&) = delete;
    ShmRegistry& operator=(const ShmRegistry&) = delete;

    // Quota held for an object being created: returned when dropped unless
    // adopt() took it over.
    class Reservation {
      public:
        Reservation() = default;
        Reservation(const Reservation&) = delete;
        Reservation& operator=(const Reservation&) = delete;
        Reservation(Reservation&& other) noexcept { *this = std::move(other); }
        Reservation& operator=(Reservation&& other) noexcept;
        ~Reservation();
        [[nodiscard]] const std::string& name() const noexcept { return name_; }

      private:
        friend class ShmRegistry;
        void give_back() noexcept;
        std::weak_ptr<std::map<uid_t, std::uint64_t>> reserved_;
        uid_t uid_ = 0;
        std::uint64_t bytes_ = 0;
        std::string name_;
    };

    // Removes /dev/shm objects named as this registry names them
    // (<prefix>-<uid>-<24 hex>): leftovers of a run that was killed.
    std::size_t sweep_leftovers() const;
    // Throws Error(busy) when `uid` cannot hold `more_bytes` more.
    void check_quota(uid_t uid, std::uint64_t more_bytes) const;
    // Reserves `bytes` of `uid`'s quota and an unguessable fresh name.
    [[nodiscard]] Reservation reserve(uid_t uid, std::uint64_t bytes);
    // Registers an object made for `reservation` (its TTL starts now).
    void adopt(Reservation reservation, uid_t uid, std::shared_ptr<ipc::SharedMemoryObject> object);
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
        std::shared_ptr<ipc::SharedMemoryObject> object;
        std::unique_ptr<boost::asio::steady_timer> expiry;
    };
    boost::asio::io_context& io_;
    std::chrono::seconds ttl_;
    std::uint64_t max_bytes_per_uid_;
    std::string prefix_;
    std::map<std::string, Entry> entries_;
    std::shared_ptr<std::map<uid_t, std::uint64_t>> reserved_ =
        std::make_shared<std::map<uid_t, std::uint64_t>>();
};

}  // namespace picklejail::daemon
