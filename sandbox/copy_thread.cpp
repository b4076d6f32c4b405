#include "sandbox/copy_thread.hpp"

#include <cstdlib>
#include <utility>

#include "common/error.hpp"
#include "sandbox/confine.hpp"
#include "sandbox/worker_signals.hpp"

namespace picklejail::sandbox {

CopyThread::CopyThread() : thread_([this] { serve(); }) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] { return ready_ || error_; });
    if (error_) {
        lock.unlock();
        thread_.join();
        std::rethrow_exception(error_);
    }
}

CopyThread::~CopyThread() {
    {
        const std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void CopyThread::serve() {
    try {
        // Per-thread parts of the confinement (see the header).
        set_no_new_privs();
        (void)apply_landlock_deny_all();
        give_thread_signal_stack();  // sigaltstack is per thread; the filter refuses it
        // The allocator sets up a thread's heap at its first allocation, and
        // mimalloc seeds it from getrandom, which the filter refuses: now,
        // before the filter, rather than in the middle of a task.
        void* volatile first = std::malloc(1);
        std::free(first);
    } catch (...) {
        const std::lock_guard lock(mutex_);
        error_ = std::current_exception();
        changed_.notify_all();
        return;
    }
    std::unique_lock lock(mutex_);
    ready_ = true;
    changed_.notify_all();
    for (;;) {
        changed_.wait(lock, [this] { return stopping_ || (busy_ && task_); });
        if (stopping_) return;
        auto task = std::exchange(task_, nullptr);
        lock.unlock();
        std::exception_ptr error;
        try {
            task();
        } catch (...) {
            error = std::current_exception();
        }
        lock.lock();
        error_ = error;
        busy_ = false;
        changed_.notify_all();
    }
}

void CopyThread::start(std::function<void()> task) {
    {
        const std::lock_guard lock(mutex_);
        if (busy_) throw Error(ErrorCode::internal, "copy thread: a task is already running");
        task_ = std::move(task);
        error_ = nullptr;
        busy_ = true;
    }
    changed_.notify_all();
}

void CopyThread::wait() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] { return !busy_; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace picklejail::sandbox
