#include "daemon/memory_trim.hpp"

#include <malloc.h>

namespace picklejail::daemon {

void MemoryTrim::after_release(std::size_t freed_bytes) {
    if (freed_bytes < kWorthTrimming || pending_) return;
    pending_ = true;
    try {
        pool_.submit(0, [this]() -> BlockingPool::Completion {
            (void)::malloc_trim(0);
            return [this] { pending_ = false; };
        });
    } catch (const Error&) {
        pending_ = false;  // the pool is full: the next large reply tries again
    }
}

}  // namespace picklejail::daemon
