#include "daemon/in_flight.hpp"

#include <fcntl.h>

#include <algorithm>

namespace picklejail::daemon {

class Recipient;

struct SharedConversion {
    InFlightConversions* owner = nullptr;
    CacheKey key;
    std::shared_ptr<Job> job;
    std::vector<std::shared_ptr<Recipient>> recipients;

    void leave(const Recipient* recipient);
    void finish(JobOutcome outcome, const std::function<void(const JobOutcome&)>& on_done);
};

class Recipient : public PendingRequest {
  public:
    Recipient(std::weak_ptr<SharedConversion> conversion, Deliver deliver)
        : conversion_(std::move(conversion)), deliver_(std::move(deliver)) {}
    void cancel() override {
        if (auto conversion = conversion_.lock()) conversion->leave(this);
        deliver_ = nullptr;
    }
    void deliver(JobOutcome outcome) {
        if (deliver_) std::exchange(deliver_, nullptr)(std::move(outcome));
    }

  private:
    std::weak_ptr<SharedConversion> conversion_;
    Deliver deliver_;
};

namespace {

// Each recipient gets its own fd; one that cannot be duplicated (fd table
// full) becomes that recipient's error, never an ok reply with no image.
JobOutcome copy_for_recipient(const JobOutcome& outcome) {
    JobOutcome copy;
    copy.result = outcome.result;
    copy.queued = outcome.queued;
    copy.ran = outcome.ran;
    if (outcome.image) {
        copy.image.reset(::fcntl(outcome.image.get(), F_DUPFD_CLOEXEC, 0));
        if (!copy.image) {
            copy.result.status = ErrorCode::internal;
            copy.result.message =
                "cannot duplicate the image for this request (too many open files)";
        }
    }
    return copy;
}

}  // namespace

void SharedConversion::leave(const Recipient* recipient) {
    std::erase_if(recipients, [recipient](const auto& r) { return r.get() == recipient; });
    if (!recipients.empty()) return;
    const auto it = owner->running_.find(key);
    if (it != owner->running_.end() && it->second.get() == this) owner->running_.erase(it);
    if (job) job->cancel();  // nobody is left to receive the result
}

void SharedConversion::finish(JobOutcome outcome,
                              const std::function<void(const JobOutcome&)>& on_done) {
    // Only this conversion's entry: a newer one for the same key may be running.
    if (const auto it = owner->running_.find(key);
        it != owner->running_.end() && it->second.get() == this) {
        owner->running_.erase(it);
    }
    if (on_done) on_done(outcome);
    auto waiting = std::move(recipients);
    for (auto& recipient : waiting) recipient->deliver(copy_for_recipient(outcome));
}

std::shared_ptr<PendingRequest> InFlightConversions::join(const CacheKey& key, Deliver deliver) {
    const auto it = running_.find(key);
    if (it == running_.end()) return nullptr;
    auto recipient = std::make_shared<Recipient>(it->second, std::move(deliver));
    it->second->recipients.push_back(recipient);
    return recipient;
}

std::shared_ptr<PendingRequest> InFlightConversions::start(
    const CacheKey& key, const std::function<std::shared_ptr<Job>(Job::Done)>& submit,
    std::function<void(const JobOutcome&)> on_done, Deliver deliver) {
    auto conversion = std::make_shared<SharedConversion>();
    conversion->owner = this;
    conversion->key = key;
    auto recipient = std::make_shared<Recipient>(conversion, std::move(deliver));
    conversion->recipients.push_back(recipient);
    std::weak_ptr<SharedConversion> weak = conversion;
    // Registered before the job exists, and removed again if it cannot be
    // submitted, so no later request joins a conversion that never runs.
    running_.emplace(key, conversion);
    try {
        conversion->job = submit([weak, on_done = std::move(on_done)](JobOutcome outcome) {
            if (auto shared = weak.lock()) shared->finish(std::move(outcome), on_done);
        });
    } catch (...) {
        running_.erase(key);
        throw;
    }
    return recipient;
}

}  // namespace picklejail::daemon
