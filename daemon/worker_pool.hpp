// The scheduler of worker jobs: at most max_workers run at once; the rest
// wait in per-uid queues served fairly (daemon/fair_queue.hpp), so one user's
// backlog never delays another user's request by more than about one job.
// Jobs are started from the event loop's thread and watched through their
// pidfds; reaping and checking a finished worker's image run on the blocking
// pool. Every completion reaches its callback through a fresh handler, never
// from inside submit() or cancel().
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "daemon/blocking_pool.hpp"
#include "daemon/fair_queue.hpp"
#include "ipc/unique_fd.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::daemon {

struct PoolLimits {
    unsigned max_workers = 1;
    unsigned max_queue = 1024;  // jobs waiting, all uids together
    unsigned max_per_uid = 64;  // one uid's jobs, waiting and running
};

struct JobOutcome {
    sandbox::JobResult result;
    ipc::UniqueFd image;  // the sealed memfd, when result.status is ok
    std::chrono::milliseconds queued{0};
    std::chrono::milliseconds ran{0};
    bool cached = false;  // served from the image cache, no worker ran
};

class WorkerPool;

// Work done for a request that the session may abandon (client gone).
class PendingRequest {
  public:
    virtual ~PendingRequest() = default;
    virtual void cancel() = 0;
};

// One request's job. Cancelling kills a running worker (or takes a waiting
// job off its queue) and suppresses its completion callback.
class Job : public PendingRequest, public std::enable_shared_from_this<Job> {
  public:
    using Done = std::function<void(JobOutcome)>;
    Job(WorkerPool& pool, uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options, Done done);
    void cancel() override;
    [[nodiscard]] uid_t uid() const noexcept { return uid_; }

  private:
    friend class WorkerPool;
    enum class State { waiting, running, finishing, finished };
    void launch();
    void on_exit();
    void on_deadline();
    void complete(JobOutcome outcome);

    WorkerPool& pool_;
    uid_t uid_;
    ipc::UniqueFd input_;
    sandbox::SpawnOptions options_;
    Done done_;
    State state_ = State::waiting;
    bool cancelled_ = false;
    bool timed_out_ = false;
    ipc::UniqueFd image_;
    std::optional<sandbox::RunningJob> worker_;
    boost::asio::posix::stream_descriptor exit_watch_;
    boost::asio::steady_timer deadline_;
    std::chrono::steady_clock::time_point submitted_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point started_;
};

class WorkerPool {
  public:
    WorkerPool(boost::asio::io_context& io, BlockingPool& blocking, PoolLimits limits);

    // Queues a job; it starts from a later handler when a worker slot is its
    // turn. Throws Error(busy) only when the caller's share or the whole queue
    // is full. `done` runs on the event loop when the job ends, unless cancelled.
    std::shared_ptr<Job> submit(uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options,
                                Job::Done done);

    // Answers every waiting (not yet running) job with `code` (used when draining).
    void refuse_queued(ErrorCode code, const std::string& message);

    [[nodiscard]] unsigned running() const noexcept { return running_; }
    [[nodiscard]] std::size_t queued() const noexcept { return queue_.queued(); }
    [[nodiscard]] bool idle() const noexcept { return running_ == 0 && queue_.queued() == 0; }
    [[nodiscard]] std::uint64_t started_total() const noexcept { return started_total_; }
    [[nodiscard]] const PoolLimits& limits() const noexcept { return limits_; }
    [[nodiscard]] boost::asio::io_context& io() noexcept { return io_; }

  private:
    friend class Job;
    void schedule();
    void start_ready();
    void job_ended(const Job& job, bool was_running);
    void drop_waiting(const std::shared_ptr<Job>& job);

    boost::asio::io_context& io_;
    BlockingPool& blocking_;
    PoolLimits limits_;
    FairQueue<std::shared_ptr<Job>> queue_;
    unsigned running_ = 0;
    std::uint64_t started_total_ = 0;
    bool start_posted_ = false;
};

}  // namespace picklejail::daemon
