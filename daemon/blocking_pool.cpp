#include "daemon/blocking_pool.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <thread>

namespace picklejail::daemon {

using WorkGuard = boost::asio::executor_work_guard<boost::asio::io_context::executor_type>;

struct BlockingPool::Shared {
    explicit Shared(boost::asio::io_context& context, const Limits& limits)
        : io(context), queue({limits.max_queued, limits.max_per_uid, limits.max_running_per_uid}) {}
    boost::asio::io_context& io;
    mutable std::mutex mutex;
    std::condition_variable wake;
    FairQueue<Work> queue;
    unsigned busy = 0;
    bool stopping = false;
};

BlockingPool::BlockingPool(boost::asio::io_context& io, Limits limits)
    : limits_(limits), shared_(std::make_shared<Shared>(io, limits)) {
    for (unsigned i = 0; i < std::max(1U, limits_.threads); ++i) {
        // Detached: each thread holds the shared state, so a thread still stuck
        // in a hung open when the daemon exits touches nothing freed.
        std::thread([shared = shared_] { thread_main(shared); }).detach();
    }
}

BlockingPool::~BlockingPool() {
    {
        const std::lock_guard lock(shared_->mutex);
        shared_->stopping = true;
    }
    shared_->wake.notify_all();
}

void BlockingPool::submit(uid_t uid, Work work) {
    // Work in a pool thread is work of the event loop's: it must not run out of
    // handlers (and return) while a result is still on its way back.
    auto guard = std::make_shared<WorkGuard>(shared_->io.get_executor());
    Work guarded = [work = std::move(work), guard]() mutable -> Completion {
        return [completion = work(), guard] { completion(); };
    };
    {
        const std::lock_guard lock(shared_->mutex);
        switch (shared_->queue.push(uid, std::move(guarded))) {
            case FairQueue<Work>::Admission::admitted:
                break;
            case FairQueue<Work>::Admission::uid_full:
                throw Error(ErrorCode::busy, "uid " + std::to_string(uid) +
                                                 " already has too much work waiting; retry later");
            case FairQueue<Work>::Admission::queue_full:
                throw Error(ErrorCode::busy, "the daemon's work queue is full; retry later");
        }
    }
    shared_->wake.notify_one();
}

void BlockingPool::thread_main(const std::shared_ptr<Shared>& shared) {
    std::unique_lock lock(shared->mutex);
    for (;;) {
        std::optional<std::pair<uid_t, Work>> next;
        shared->wake.wait(lock, [&] {
            if (shared->stopping) return true;
            next = shared->queue.pop();
            return next.has_value();
        });
        if (shared->stopping) return;
        ++shared->busy;
        const uid_t uid = next->first;
        lock.unlock();
        Completion completion = next->second();
        next.reset();  // work closures hold plain data only; completions hold the loop's objects
        lock.lock();
        // Under the lock: once the destructor has set `stopping`, nothing more
        // is posted to an event loop that may be gone.
        if (!shared->stopping) boost::asio::post(shared->io, std::move(completion));
        --shared->busy;
        shared->queue.finished(uid);
        // Another uid's work may have been held back by the per-uid cap.
        shared->wake.notify_all();
    }
}

std::size_t BlockingPool::queued() const {
    const std::lock_guard lock(shared_->mutex);
    return shared_->queue.queued();
}

unsigned BlockingPool::busy_threads() const {
    const std::lock_guard lock(shared_->mutex);
    return shared_->busy;
}

}  // namespace picklejail::daemon
