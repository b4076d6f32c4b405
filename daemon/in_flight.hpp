// Conversions in progress that several requests share: while a worker
// converts a file, further requests for the same cache key wait for its
// result instead of starting their own worker.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "daemon/image_cache.hpp"
#include "daemon/worker_pool.hpp"

namespace picklejail::daemon {

using Deliver = std::function<void(JobOutcome)>;

struct SharedConversion;

class InFlightConversions {
  public:
    // Adds `deliver` as a recipient of the conversion running for `key`;
    // nullptr when none runs.
    [[nodiscard]] std::shared_ptr<PendingRequest> join(const CacheKey& key, Deliver deliver);

    // Starts a conversion with `submit` (which may throw, e.g. busy) and
    // registers `deliver` as its first recipient. `on_done` sees the outcome
    // first (to fill the cache); each recipient then gets its own copy, with
    // its own duplicate of the image fd. When every recipient has cancelled,
    // the worker is killed.
    [[nodiscard]] std::shared_ptr<PendingRequest> start(
        const CacheKey& key, const std::function<std::shared_ptr<Job>(Job::Done)>& submit,
        std::function<void(const JobOutcome&)> on_done, Deliver deliver);

    [[nodiscard]] std::size_t size() const noexcept { return running_.size(); }

  private:
    friend struct SharedConversion;
    std::map<CacheKey, std::shared_ptr<SharedConversion>> running_;
};

}  // namespace picklejail::daemon
