// Admission and scheduling of worker jobs: at most max_workers run at once,
// up to max_queue wait, and each uid has at most max_per_uid in the system.
// Jobs are started from the event loop's thread and watched through their
// pidfds, so the loop never blocks on a worker.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "ipc/unique_fd.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::daemon {

struct PoolLimits {
    unsigned max_workers = 1;
    unsigned max_queue = 64;
    unsigned max_per_uid = 8;
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

// One request's job. Cancelling kills a running worker (or drops a queued
// job) and suppresses its completion callback.
class Job : public PendingRequest, public std::enable_shared_from_this<Job> {
  public:
    using Done = std::function<void(JobOutcome)>;
    Job(boost::asio::io_context& io, uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options,
        Done done);
    void cancel() override;
    [[nodiscard]] uid_t uid() const noexcept { return uid_; }
    [[nodiscard]] bool running() const noexcept { return running_.has_value(); }

  private:
    friend class WorkerPool;
    void launch(WorkerPool& pool);
    void on_exit(bool timed_out);
    void complete(JobOutcome outcome);

    uid_t uid_;
    ipc::UniqueFd input_;
    sandbox::SpawnOptions options_;
    Done done_;
    bool cancelled_ = false;
    bool finished_ = false;
    WorkerPool* pool_ = nullptr;
    ipc::UniqueFd image_;
    std::optional<sandbox::RunningJob> running_;
    boost::asio::posix::stream_descriptor exit_watch_;
    boost::asio::steady_timer deadline_;
    std::chrono::steady_clock::time_point submitted_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point started_;
};

class WorkerPool {
  public:
    WorkerPool(boost::asio::io_context& io, PoolLimits limits) : io_(io), limits_(limits) {}

    // Queues a job, starting it at once when a worker slot is free. Throws
    // Error(busy) when the queue or the caller's share is full. `done` runs
    // on the event loop when the job ends, unless it was cancelled.
    std::shared_ptr<Job> submit(uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options,
                                Job::Done done);

    // Answers every queued (not yet running) job with `code` (used when draining).
    void refuse_queued(ErrorCode code, const std::string& message);

    [[nodiscard]] unsigned running() const noexcept { return running_; }
    [[nodiscard]] std::size_t queued() const noexcept { return queue_.size(); }
    [[nodiscard]] bool idle() const noexcept { return running_ == 0 && queue_.empty(); }
    [[nodiscard]] std::uint64_t started_total() const noexcept { return started_total_; }
    [[nodiscard]] const PoolLimits& limits() const noexcept { return limits_; }

  private:
    friend class Job;
    void start_ready();
    void job_ended(const Job& job);
    void drop_queued(const std::shared_ptr<Job>& job);

    boost::asio::io_context& io_;
    PoolLimits limits_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::map<uid_t, unsigned> per_uid_;
    unsigned running_ = 0;
    std::uint64_t started_total_ = 0;
};

}  // namespace picklejail::daemon
