// A second thread a caller may lend the loader, for work that can run beside
// the pickle VM (reading a zip directory). The loader starts no thread of its
// own, as it makes no syscalls; the worker lends its copy thread.
#pragma once

#include <functional>

namespace picklejail::loader {

class HelperThread {
  public:
    HelperThread() = default;
    HelperThread(const HelperThread&) = delete;
    HelperThread& operator=(const HelperThread&) = delete;
    virtual ~HelperThread() = default;

    // Runs `task` on the thread; wait() blocks until it has finished and
    // rethrows what it threw. One task at a time.
    virtual void start(std::function<void()> task) = 0;
    virtual void wait() = 0;
};

}  // namespace picklejail::loader
