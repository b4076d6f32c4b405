// The image cache's bookkeeping (daemon/image_cache.hpp): hits, staleness,
// LRU bounds and policy generations.
#include <sys/mman.h>

#include <catch2/catch.hpp>

#include "daemon/image_cache.hpp"

using namespace picklejail::daemon;

namespace {

CachedImage image_of(std::uint64_t size) {
    return {std::make_shared<const picklejail::ipc::UniqueFd>(::memfd_create("t", MFD_CLOEXEC)),
            size, 1, "zip"};
}

CacheKey key_for(std::uint64_t inode, std::uint64_t generation, std::int64_t mtime = 1) {
    return {FileIdentity{1, inode, 10, mtime, 1}, "weights", generation, {}, false};
}

}  // namespace

TEST_CASE("image cache: entries made under an older policy generation are not kept") {
    ImageCache cache(1000);
    cache.start_generation(2);
    cache.insert(key_for(1, 1), image_of(10));  // a conversion that began before the reload
    CHECK(cache.entries() == 0);
    cache.insert(key_for(1, 2), image_of(10));
    CHECK(cache.entries() == 1);
    CHECK(cache.find(key_for(1, 2)));
    cache.start_generation(3);
    CHECK(cache.entries() == 0);
    CHECK_FALSE(cache.find(key_for(1, 2)));
}

TEST_CASE("image cache: a changed file and the byte bound drop entries") {
    ImageCache cache(25);
    cache.insert(key_for(1, 0), image_of(10));
    cache.insert(key_for(2, 0), image_of(10));
    CHECK(cache.find(key_for(1, 0)));           // 1 is now the most recent
    cache.insert(key_for(3, 0), image_of(10));  // evicts 2
    CHECK(cache.find(key_for(1, 0)));
    CHECK_FALSE(cache.find(key_for(2, 0)));
    CHECK_FALSE(cache.find(key_for(1, 0, 99)));  // same inode, new mtime: stale
    CHECK_FALSE(cache.find(key_for(1, 0)));
    cache.insert(key_for(4, 0), image_of(26));  // larger than the cache: not kept
    CHECK_FALSE(cache.find(key_for(4, 0)));
}
