#include "daemon/shm_registry.hpp"

#include <sys/random.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <regex>

#include "common/error.hpp"

namespace picklejail::daemon {
namespace {

constexpr std::size_t kRandomBytes = 12;

// Unguessable, so one user cannot predict (and pre-create) another's name.
std::string fresh_name(const std::string& prefix, uid_t uid) {
    std::array<unsigned char, kRandomBytes> random{};
    if (::getrandom(random.data(), random.size(), 0) != static_cast<ssize_t>(random.size()))
        throw Error(ErrorCode::internal, "getrandom failed");
    std::string name = prefix + "-" + std::to_string(uid) + "-";
    for (const unsigned char byte : random) {
        char hex[3];
        (void)std::snprintf(hex, sizeof hex, "%02x", byte);
        name += hex;
    }
    return name;
}

}  // namespace

ShmRegistry::Reservation& ShmRegistry::Reservation::operator=(Reservation&& other) noexcept {
    if (this != &other) {
        give_back();
        reserved_ = std::move(other.reserved_);
        uid_ = other.uid_;
        bytes_ = std::exchange(other.bytes_, 0);
        name_ = std::move(other.name_);
        other.reserved_.reset();
    }
    return *this;
}

ShmRegistry::Reservation::~Reservation() {
    give_back();
}

void ShmRegistry::Reservation::give_back() noexcept {
    if (auto reserved = reserved_.lock(); reserved && bytes_ > 0) {
        auto& held = (*reserved)[uid_];
        held -= std::min(held, bytes_);
        if (held == 0) reserved->erase(uid_);
    }
    reserved_.reset();
    bytes_ = 0;
}

ShmRegistry::ShmRegistry(boost::asio::io_context& io, std::chrono::seconds ttl,
                         std::uint64_t max_bytes_per_uid, std::string prefix)
    : io_(io), ttl_(ttl), max_bytes_per_uid_(max_bytes_per_uid), prefix_(std::move(prefix)) {}

std::size_t ShmRegistry::sweep_leftovers() const {
    const std::regex ours(prefix_ + "-[0-9]+-[0-9a-f]{" + std::to_string(2 * kRandomBytes) + "}");
    std::size_t removed = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
        const auto name = entry.path().filename().string();
        if (!std::regex_match(name, ours)) continue;
        if (std::filesystem::remove(entry.path(), ec)) ++removed;
    }
    return removed;
}

std::uint64_t ShmRegistry::bytes_held(uid_t uid) const {
    std::uint64_t total = 0;
    for (const auto& [name, entry] : entries_) {
        if (entry.owner == uid) total += entry.object->size();
    }
    if (const auto it = reserved_->find(uid); it != reserved_->end()) total += it->second;
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

ShmRegistry::Reservation ShmRegistry::reserve(uid_t uid, std::uint64_t bytes) {
    check_quota(uid, bytes);
    Reservation reservation;
    reservation.name_ = fresh_name(prefix_, uid);
    reservation.reserved_ = reserved_;
    reservation.uid_ = uid;
    reservation.bytes_ = bytes;
    (*reserved_)[uid] += bytes;
    return reservation;
}

void ShmRegistry::adopt(Reservation reservation, uid_t uid,
                        std::shared_ptr<ipc::SharedMemoryObject> object) {
    const std::string name = object->name();
    Entry entry{uid, std::move(object), std::make_unique<boost::asio::steady_timer>(io_, ttl_)};
    entry.expiry->async_wait([this, name](const boost::system::error_code& ec) {
        if (!ec) entries_.erase(name);
    });
    entries_.emplace(name, std::move(entry));
    // The entry counts the bytes from here on; dropping the reservation returns
    // its share.
    (void)reservation;
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
