// The shared image cache: finished, sealed images kept for later requests
// for the same file and policy, and conversions in flight shared by every
// request that asks for the same thing meanwhile (8 ranks loading one
// checkpoint start one worker). The key is the file's identity as seen
// through the caller's own fd, so a caller only ever reaches an image for a
// file it could open itself. Bounded by bytes, least recently used first.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon/caller_file.hpp"
#include "ipc/unique_fd.hpp"

namespace picklejail::daemon {

struct CacheKey {
    FileIdentity file;
    std::string policy;
    std::uint64_t policy_generation = 0;  // bumped by SIGHUP reloads
    std::vector<std::string> select;
    bool map_file = false;  // a layout-only image (mmap) is another image
    // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads defaulted <=>
    friend auto operator<=>(const CacheKey&, const CacheKey&) = default;
};

// A sealed memfd and what the worker said about it. Shared: handing it out
// means sending a duplicate of the fd.
struct CachedImage {
    std::shared_ptr<const ipc::UniqueFd> fd;
    std::uint64_t size = 0;
    std::uint64_t tensors = 0;
    std::string format;
};

class ImageCache {
  public:
    explicit ImageCache(std::uint64_t max_bytes) : max_bytes_(max_bytes) {}

    // A hit moves the entry to the front. Entries for the same device and
    // inode whose size or times differ (the file changed) are dropped.
    [[nodiscard]] std::optional<CachedImage> find(const CacheKey& key);
    // Keeps `image` unless it alone is larger than the cache, or its key was
    // made under an older policy generation (a conversion that started before
    // a reload would otherwise add an entry no request can ever hit).
    void insert(const CacheKey& key, CachedImage image);
    void clear();
    // Drops every entry and accepts only keys of `generation` from now on.
    void start_generation(std::uint64_t generation);

    [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }
    [[nodiscard]] std::size_t entries() const noexcept { return lru_.size(); }
    [[nodiscard]] nlohmann::json stats() const;
    void count_coalesced() noexcept { ++coalesced_; }

  private:
    using Entry = std::pair<CacheKey, CachedImage>;
    void drop_stale(const FileIdentity& file);
    void evict_to(std::uint64_t limit);

    std::uint64_t max_bytes_;
    std::uint64_t bytes_ = 0;
    std::uint64_t generation_ = 0;
    std::list<Entry> lru_;  // front: most recently used
    std::map<CacheKey, std::list<Entry>::iterator> index_;
    std::uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, invalidations_ = 0, coalesced_ = 0;
};

}  // namespace picklejail::daemon
