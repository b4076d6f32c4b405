// A second thread for the worker's one big copy (input pages into the output
// memfd), so a large checkpoint is copied by two cores.
//
// The seccomp filter has no clone, so the thread is started before the worker
// confines itself. Everything in the confinement that is per process (rlimits,
// namespaces, root, uid and gid through glibc's setxid broadcast) covers it as
// it covers the main thread; what is per thread it gets too: it sets
// no_new_privs and applies the Landlock deny-all ruleset to itself before the
// constructor returns, and the filter is loaded for every thread at once
// (SECCOMP_FILTER_FLAG_TSYNC; the load fails if the thread cannot be synced).
// It runs only tasks the main thread hands it: the copy, and before that a
// share of the reading (loader/helper_thread.hpp).
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "loader/helper_thread.hpp"

namespace picklejail::sandbox {

class CopyThread final : public loader::HelperThread {
  public:
    CopyThread();  // returns once the thread has confined itself as far as it can alone
    ~CopyThread() override;
    CopyThread(const CopyThread&) = delete;
    CopyThread& operator=(const CopyThread&) = delete;

    // Runs `task` on the thread; wait() blocks until it has finished and
    // rethrows what it threw. One task at a time.
    void start(std::function<void()> task) override;
    void wait() override;

  private:
    void serve();

    std::mutex mutex_;
    std::condition_variable changed_;
    std::function<void()> task_;
    std::exception_ptr error_;
    bool ready_ = false;  // the thread has confined itself
    bool busy_ = false;
    bool stopping_ = false;
    std::thread thread_;  // last: started once the members above exist
};

}  // namespace picklejail::sandbox
