// A loader::HelperThread for the unit tests and fuzzers: a std::thread per
// task (the worker lends its sandbox::CopyThread instead).
#pragma once

#include <exception>
#include <functional>
#include <thread>
#include <utility>

#include "loader/helper_thread.hpp"

namespace picklejail::test {

class ThreadHelper final : public loader::HelperThread {
  public:
    ThreadHelper() = default;
    ~ThreadHelper() override {
        if (thread_.joinable()) thread_.join();
    }
    void start(std::function<void()> task) override {
        ++started_;
        thread_ = std::thread([this, task = std::move(task)] {
            try {
                task();
            } catch (...) {
                error_ = std::current_exception();
            }
        });
    }
    void wait() override {
        thread_.join();
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }
    [[nodiscard]] int started() const { return started_; }

  private:
    std::thread thread_;
    std::exception_ptr error_;
    int started_ = 0;
};

}  // namespace picklejail::test
