#include "daemon/image_cache.hpp"

namespace picklejail::daemon {

std::optional<CachedImage> ImageCache::find(const CacheKey& key) {
    drop_stale(key.file);
    const auto it = index_.find(key);
    if (it == index_.end()) {
        ++misses_;
        return std::nullopt;
    }
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
}

void ImageCache::insert(const CacheKey& key, CachedImage image) {
    if (image.size > max_bytes_ || key.policy_generation != generation_ || index_.contains(key))
        return;
    drop_stale(key.file);
    evict_to(max_bytes_ - image.size);
    bytes_ += image.size;
    lru_.emplace_front(key, std::move(image));
    index_.emplace(key, lru_.begin());
}

void ImageCache::start_generation(std::uint64_t generation) {
    clear();
    generation_ = generation;
}

void ImageCache::clear() {
    index_.clear();
    lru_.clear();
    bytes_ = 0;
}

void ImageCache::drop_stale(const FileIdentity& file) {
    for (auto it = lru_.begin(); it != lru_.end();) {
        const auto& cached = it->first.file;
        if (cached.device == file.device && cached.inode == file.inode && cached != file) {
            bytes_ -= it->second.size;
            index_.erase(it->first);
            it = lru_.erase(it);
            ++invalidations_;
        } else {
            ++it;
        }
    }
}

void ImageCache::evict_to(std::uint64_t limit) {
    while (bytes_ > limit && !lru_.empty()) {
        bytes_ -= lru_.back().second.size;
        index_.erase(lru_.back().first);
        lru_.pop_back();
        ++evictions_;
    }
}

nlohmann::json ImageCache::stats() const {
    return {{"entries", lru_.size()},
            {"bytes", bytes_},
            {"max_bytes", max_bytes_},
            {"hits", hits_},
            {"misses", misses_},
            {"evictions", evictions_},
            {"invalidations", invalidations_},
            {"coalesced", coalesced_}};
}

}  // namespace picklejail::daemon
