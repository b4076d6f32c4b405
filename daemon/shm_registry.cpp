#include "daemon/shm_registry.hpp"

#include <sys/random.h>

#include <array>
#include <cstdio>

#include "common/error.hpp"

namespace picklejail::daemon {
namespace {

// Unguessable, so one user cannot predict (and pre-create) another's name.
std::string fresh_name(uid_t uid) {
    std::array<unsigned char, 12> random{};
    if (::getrandom(random.data(), random.size(), 0) != static_cast<ssize_t>(random.size()))
        throw Error(ErrorCode::internal, "getrandom failed");
    std::string name = "picklejail-" + std::to_string(uid) + "-";
    for (const unsigned char byte : random) {
        char hex[3];
        (void)std::snprintf(hex, sizeof hex, "%02x", byte);
        name += hex;
    }
    return name;
}

}  // namespace

ShmRegistry::ShmRegistry(boost::asio::io_context& io, std::chrono::seconds ttl,
                         std::uint64_t max_bytes_per_uid)
    : io_(io), ttl_(ttl), max_bytes_per_uid_(max_bytes_per_uid) {}

std::uint64_t ShmRegistry::bytes_held(uid_t uid) const {
    std::uint64_t total = 0;
    for (const auto& [name, entry] : entries_) {
        if (entry.owner == uid) total += entry.object->size();
    }
    return total;
}

std::uint64_t ShmRegistry::total_bytes() const noexcept {
    std::uint64_t total = 0;
    for (const auto& [name, entry] : entries_) total += entry.object->size();
    return total;
}

void ShmRegistry::check_quota(uid_t uid, std::uint64_t more_bytes) const {
    const std::uint64_t held = bytes_held(uid);
    if (held > max_bytes_per_uid_ || more_bytes > max_bytes_per_uid_ - held) {
        throw Error(ErrorCode::busy, "uid " + std::to_string(uid) + " holds " +
                                         std::to_string(held) +
                                         " bytes of unreleased shared memory (limit " +
                                         std::to_string(max_bytes_per_uid_) + "); release some");
    }
}

std::string ShmRegistry::publish(uid_t uid, gid_t gid, std::span<const std::byte> image) {
    check_quota(uid, image.size());
    std::string name = fresh_name(uid);
    Entry entry{uid, std::make_unique<ipc::SharedMemoryObject>(name, image, uid, gid),
                std::make_unique<boost::asio::steady_timer>(io_, ttl_)};
    entry.expiry->async_wait([this, name](const boost::system::error_code& ec) {
        if (!ec) entries_.erase(name);
    });
    entries_.emplace(name, std::move(entry));
    return name;
}

void ShmRegistry::release(uid_t uid, const std::string& name) {
    const auto it = entries_.find(name);
    if (it == entries_.end())
        throw Error(ErrorCode::invalid_request,
                    "no shared memory named \"" + name.substr(0, 80) + "\"");
    if (it->second.owner != uid)
        throw Error(ErrorCode::denied, "that shared memory belongs to another user");
    it->second.expiry->cancel();
    entries_.erase(it);
}

void ShmRegistry::clear() {
    for (auto& [name, entry] : entries_) entry.expiry->cancel();
    entries_.clear();
}

}  // namespace picklejail::daemon
