// Large replies (inspect listings, lines of megabytes) are built on pool
// threads, in glibc's per-thread arenas, which keep freed memory. After one
// is delivered, a trim (malloc_trim, off the event loop, at most one at a
// time) gives the pages back, so a burst of big replies does not leave the
// daemon's resident set high for good.
#pragma once

#include <cstddef>

#include "daemon/blocking_pool.hpp"

namespace picklejail::daemon {

class MemoryTrim {
  public:
    static constexpr std::size_t kWorthTrimming = std::size_t{1} << 20;

    explicit MemoryTrim(BlockingPool& pool) : pool_(pool) {}
    // Called on the event loop after `freed_bytes` of reply were released.
    void after_release(std::size_t freed_bytes);

  private:
    BlockingPool& pool_;
    bool pending_ = false;
};

}  // namespace picklejail::daemon
