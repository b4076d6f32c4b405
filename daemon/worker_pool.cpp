#include "daemon/worker_pool.hpp"

#include <fcntl.h>

#include <algorithm>
#include <boost/asio/post.hpp>

#include "ipc/memfd.hpp"

namespace picklejail::daemon {
namespace {

std::chrono::milliseconds since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 start);
}

JobOutcome failed(ErrorCode code, const std::string& message) {
    JobOutcome outcome;
    outcome.result.status = code;
    outcome.result.message = message;
    return outcome;
}

}  // namespace

Job::Job(boost::asio::io_context& io, uid_t uid, ipc::UniqueFd input, sandbox::SpawnOptions options,
         Done done)
    : uid_(uid),
      input_(std::move(input)),
      options_(std::move(options)),
      done_(std::move(done)),
      exit_watch_(io),
      deadline_(io) {}

void Job::launch(WorkerPool& pool) {
    pool_ = &pool;
    started_ = std::chrono::steady_clock::now();
    try {
        image_ = ipc::create_image_memfd("picklejail-image");
        running_.emplace(sandbox::start_worker(input_.get(), image_.get(), options_));
        // asio owns (and closes) a duplicate; the job keeps its own pidfd.
        const int watch = ::fcntl(running_->pidfd(), F_DUPFD_CLOEXEC, 0);
        if (watch < 0) throw Error(ErrorCode::internal, "cannot watch the worker's pidfd");
        exit_watch_.assign(watch);
    } catch (const Error& e) {
        running_.reset();
        complete(failed(e.code(), e.what()));
        return;
    }
    input_.reset();  // the worker holds its own copy
    auto self = shared_from_this();
    exit_watch_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                           [self](const boost::system::error_code& ec) {
                               if (ec != boost::asio::error::operation_aborted)
                                   self->on_exit(false);
                           });
    deadline_.expires_after(options_.deadline);
    deadline_.async_wait([self](const boost::system::error_code& ec) {
        if (!ec) self->on_exit(true);
    });
}

void Job::on_exit(bool timed_out) {
    if (finished_ || !running_) return;
    exit_watch_.cancel();
    deadline_.cancel();
    JobOutcome outcome;
    outcome.result = running_->finish(timed_out);
    outcome.queued = std::chrono::duration_cast<std::chrono::milliseconds>(started_ - submitted_);
    outcome.ran = since(started_);
    if (outcome.result.status == ErrorCode::ok) outcome.image = std::move(image_);
    image_.reset();
    complete(std::move(outcome));
}

void Job::complete(JobOutcome outcome) {
    if (finished_) return;
    finished_ = true;
    WorkerPool* pool = pool_;
    if (!cancelled_ && done_) done_(std::move(outcome));
    done_ = nullptr;  // drops whatever the callback captured (sessions, fds)
    if (pool != nullptr) pool->job_ended(*this);
}

void Job::cancel() {
    if (finished_ || cancelled_) return;
    cancelled_ = true;
    if (running_) {
        running_->kill();  // the pidfd wakes on_exit, which reaps it
    } else if (pool_ == nullptr) {
        // Still queued: nothing runs, so take it off the queue now.
        finished_ = true;
        done_ = nullptr;
    }
}

std::shared_ptr<Job> WorkerPool::submit(uid_t uid, ipc::UniqueFd input,
                                        sandbox::SpawnOptions options, Job::Done done) {
    unsigned& mine = per_uid_[uid];
    if (mine >= limits_.max_per_uid) {
        throw Error(ErrorCode::busy, "uid " + std::to_string(uid) + " already has " +
                                         std::to_string(mine) + " requests in progress (limit " +
                                         std::to_string(limits_.max_per_uid) + ")");
    }
    const bool slot_free = running_ < limits_.max_workers;
    if (!slot_free && queue_.size() >= limits_.max_queue) {
        throw Error(ErrorCode::busy, "all " + std::to_string(limits_.max_workers) +
                                         " workers are busy and " + std::to_string(queue_.size()) +
                                         " requests are queued; retry later");
    }
    auto job =
        std::make_shared<Job>(io_, uid, std::move(input), std::move(options), std::move(done));
    ++mine;
    queue_.push_back(job);
    start_ready();
    return job;
}

void WorkerPool::start_ready() {
    while (running_ < limits_.max_workers && !queue_.empty()) {
        auto job = std::move(queue_.front());
        queue_.pop_front();
        if (job->finished_) {  // cancelled while queued
            job_ended(*job);
            continue;
        }
        ++running_;
        ++started_total_;
        job->launch(*this);
    }
}

void WorkerPool::job_ended(const Job& job) {
    if (job.pool_ != nullptr && running_ > 0) --running_;
    auto it = per_uid_.find(job.uid());
    if (it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
    // Start the next job from a fresh handler, not inside this one's callbacks.
    boost::asio::post(io_, [this] { start_ready(); });
}

void WorkerPool::refuse_queued(ErrorCode code, const std::string& message) {
    auto queued = std::move(queue_);
    queue_.clear();
    for (auto& job : queued) {
        if (job->finished_) {
            job_ended(*job);
            continue;
        }
        job->complete(failed(code, message));
        job_ended(*job);
    }
}

}  // namespace picklejail::daemon
