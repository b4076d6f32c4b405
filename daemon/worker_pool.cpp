#include "daemon/worker_pool.hpp"

#include <fcntl.h>

#include <boost/asio/post.hpp>

#include "ipc/memfd.hpp"

namespace picklejail::daemon {
namespace {

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(to - from);
}

JobOutcome failed(ErrorCode code, const std::string& message) {
    JobOutcome outcome;
    outcome.result.status = code;
    outcome.result.message = message;
    return outcome;
}

}  // namespace

Job::Job(WorkerPool& pool, uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options, Done done)
    : pool_(pool),
      uid_(uid),
      input_(std::move(input)),
      options_(std::move(options)),
      done_(std::move(done)),
      exit_watch_(pool.io()),
      deadline_(pool.io()) {}

void Job::launch() {
    state_ = State::running;
    started_ = Clock::now();
    try {
        image_ = ipc::create_image_memfd("picklejail-image");
        worker_.emplace(sandbox::start_worker(input_.get(), image_.get(), options_));
        // asio owns (and closes) a duplicate; the RunningJob keeps its own pidfd.
        const int watch = ::fcntl(worker_->pidfd(), F_DUPFD_CLOEXEC, 0);
        if (watch < 0) throw Error(ErrorCode::internal, "cannot watch the worker's pidfd");
        exit_watch_.assign(watch);
    } catch (const Error& e) {
        // Reported from a fresh handler like every other ending (a launch that
        // fails at once must not re-enter whoever submitted the job).
        state_ = State::finishing;
        worker_.reset();
        boost::asio::post(pool_.io(), [self = shared_from_this(),
                                       outcome = failed(e.code(), e.what())]() mutable {
            self->complete(std::move(outcome));
        });
        return;
    }
    input_.reset();  // the worker holds its own copy
    auto self = shared_from_this();
    exit_watch_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                           [self](const boost::system::error_code& ec) {
                               if (ec != boost::asio::error::operation_aborted) self->on_exit();
                           });
    deadline_.expires_after(options_.deadline);
    deadline_.async_wait([self](const boost::system::error_code& ec) {
        if (!ec) self->on_deadline();
    });
}

// Killed here, collected when its pidfd says it is gone: reaping never waits
// for a process that is still alive.
void Job::on_deadline() {
    if (state_ != State::running || !worker_) return;
    timed_out_ = true;
    worker_->kill();
}

void Job::on_exit() {
    if (state_ != State::running || !worker_) return;
    state_ = State::finishing;
    deadline_.cancel();
    // Reaping, reading the result pipe, sealing and checking the image run on
    // the blocking pool; the closure carries plain data only.
    auto worker = std::make_shared<sandbox::RunningJob>(std::move(*worker_));
    worker_.reset();
    auto image = std::make_shared<ipc::UniqueFd>(std::move(image_));
    const bool timed_out = timed_out_;
    const auto queued = between(submitted_, started_);
    const auto started = started_;
    std::function<JobOutcome()> work = [worker, image, timed_out, queued, started] {
        JobOutcome outcome;
        outcome.result = worker->finish(timed_out);
        if (outcome.result.status == ErrorCode::ok) outcome.image = std::move(*image);
        image->reset();
        outcome.queued = queued;
        outcome.ran = between(started, Clock::now());
        return outcome;
    };
    auto self = shared_from_this();
    try {
        pool_.blocking_.run<JobOutcome>(
            uid_, std::move(work), [self](std::variant<JobOutcome, Error> result) {
                if (auto* error = std::get_if<Error>(&result)) {
                    self->complete(failed(error->code(), error->what()));
                } else {
                    self->complete(std::move(std::get<JobOutcome>(result)));
                }
            });
    } catch (const Error& e) {
        complete(failed(e.code(), e.what()));  // the worker is killed and reaped with `worker`
    }
}

void Job::complete(JobOutcome outcome) {
    if (state_ == State::finished) return;
    const bool was_running = state_ != State::waiting;
    state_ = State::finished;
    if (!cancelled_ && done_) done_(std::move(outcome));
    done_ = nullptr;  // drops whatever the callback captured (sessions, fds)
    pool_.job_ended(*this, was_running);
}

void Job::cancel() {
    if (state_ == State::finished || cancelled_) return;
    cancelled_ = true;
    switch (state_) {
        case State::waiting:
            pool_.drop_waiting(shared_from_this());
            state_ = State::finished;
            done_ = nullptr;
            break;
        case State::running:
            if (worker_) worker_->kill();  // the pidfd wakes on_exit, which collects it
            break;
        case State::finishing:
        case State::finished:
            break;  // the completion arrives and is suppressed
    }
}

WorkerPool::WorkerPool(boost::asio::io_context& io, BlockingPool& blocking, PoolLimits limits)
    : io_(io),
      blocking_(blocking),
      limits_(limits),
      // The total is checked in submit(), where free worker slots are known.
      queue_({std::numeric_limits<std::size_t>::max(), limits.max_per_uid,
              std::numeric_limits<std::size_t>::max()}) {}

std::shared_ptr<Job> WorkerPool::submit(uid_t uid, ipc::UniqueFd input,
                                        sandbox::SpawnOptions options, Job::Done done) {
    // Jobs about to take a free slot do not count as waiting.
    const std::size_t free_slots = limits_.max_workers - std::min(running_, limits_.max_workers);
    const std::size_t waiting = queue_.queued() - std::min(queue_.queued(), free_slots);
    if (waiting >= limits_.max_queue && queue_.queued() >= free_slots) {
        throw Error(ErrorCode::busy, std::to_string(waiting) +
                                         " requests are already waiting for a worker (the "
                                         "limit); retry later");
    }
    auto job =
        std::make_shared<Job>(*this, uid, std::move(input), std::move(options), std::move(done));
    switch (queue_.push(uid, job)) {
        case FairQueue<std::shared_ptr<Job>>::Admission::admitted:
            break;
        case FairQueue<std::shared_ptr<Job>>::Admission::uid_full:
            throw Error(ErrorCode::busy, "uid " + std::to_string(uid) + " already has " +
                                             std::to_string(limits_.max_per_uid) +
                                             " requests waiting or running (the limit); retry "
                                             "when some finish");
        case FairQueue<std::shared_ptr<Job>>::Admission::queue_full:
            throw Error(ErrorCode::busy, std::to_string(queue_.queued()) +
                                             " requests are already waiting for a worker (the "
                                             "limit); retry later");
    }
    schedule();
    return job;
}

void WorkerPool::schedule() {
    if (start_posted_) return;
    start_posted_ = true;
    boost::asio::post(io_, [this] { start_ready(); });
}

void WorkerPool::start_ready() {
    start_posted_ = false;
    while (running_ < limits_.max_workers) {
        auto next = queue_.pop();
        if (!next) break;
        ++running_;
        ++started_total_;
        next->second->launch();
    }
}

void WorkerPool::job_ended(const Job& job, bool was_running) {
    if (was_running) {
        if (running_ > 0) --running_;
        queue_.finished(job.uid());
    }
    schedule();
}

void WorkerPool::drop_waiting(const std::shared_ptr<Job>& job) {
    (void)queue_.remove_waiting(job->uid(),
                                [&job](const std::shared_ptr<Job>& other) { return other == job; });
}

void WorkerPool::refuse_queued(ErrorCode code, const std::string& message) {
    for (auto& job : queue_.take_all_waiting()) {
        boost::asio::post(io_, [job, outcome = failed(code, message)]() mutable {
            job->complete(std::move(outcome));
        });
    }
}

}  // namespace picklejail::daemon
