// A few threads for the work the event loop must never do itself: opening a
// caller's path (a hung NFS or FUSE file blocks there, not in the loop),
// reaping a worker and checking its image, building a large reply, copying
// an image into shared memory. Work is queued per uid and served fairly, and
// one uid may occupy at most `max_running_per_uid` threads, so a user whose
// files hang can only stall their own requests. Results come back to the
// event loop through asio::post; nothing here touches the daemon's state.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>

#include "common/error.hpp"
#include "daemon/fair_queue.hpp"

namespace picklejail::daemon {

class BlockingPool {
  public:
    using Completion = std::function<void()>;  // runs on the event loop
    using Work = std::function<Completion()>;  // runs on a pool thread; must not throw

    struct Limits {
        unsigned threads = 4;
        std::size_t max_running_per_uid = 2;
        std::size_t max_queued = 4096;
        std::size_t max_per_uid = 256;
    };

    BlockingPool(boost::asio::io_context& io, Limits limits);
    BlockingPool(const BlockingPool&) = delete;
    BlockingPool& operator=(const BlockingPool&) = delete;
    // Stops the threads once their current work ends. A thread stuck in the
    // kernel (a hung file system) is left behind, detached: exit reclaims it.
    ~BlockingPool();

    // Queues `work` for `uid`. Throws Error(busy) when its queue is full.
    void submit(uid_t uid, Work work);

    // Runs `work` on a pool thread and `done` on the event loop with its result,
    // or with the Error it threw.
    template <typename Result>
    void run(uid_t uid, std::function<Result()> work,
             std::function<void(std::variant<Result, Error>)> done) {
        submit(uid, [work = std::move(work), done = std::move(done)]() mutable -> Completion {
            // Shared, because std::function needs a copyable closure and results
            // (fds) are move-only.
            auto outcome = std::make_shared<std::variant<Result, Error>>(attempt(work));
            return [done = std::move(done), outcome] { done(std::move(*outcome)); };
        });
    }

    [[nodiscard]] std::size_t queued() const;
    [[nodiscard]] unsigned busy_threads() const;
    [[nodiscard]] const Limits& limits() const noexcept { return limits_; }

  private:
    struct Shared;
    template <typename Result>
    static std::variant<Result, Error> attempt(std::function<Result()>& work) {
        try {
            return work();
        } catch (const Error& e) {
            return e;
        } catch (const std::exception& e) {
            return Error(ErrorCode::internal, e.what());
        }
    }
    static void thread_main(const std::shared_ptr<Shared>& shared);

    Limits limits_;
    std::shared_ptr<Shared> shared_;
};

}  // namespace picklejail::daemon
