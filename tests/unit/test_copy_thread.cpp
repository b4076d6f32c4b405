// The worker's copy thread outside the sandbox: tasks run on another thread,
// one after another, and an exception a task throws reaches wait().
#include <atomic>
#include <catch2/catch.hpp>
#include <stdexcept>
#include <thread>

#include "common/error.hpp"
#include "sandbox/copy_thread.hpp"

using picklejail::Error;
using picklejail::sandbox::CopyThread;

TEST_CASE("copy_thread: runs each task on its own thread", "[sandbox]") {
    CopyThread helper;
    std::thread::id ran_on;
    int runs = 0;
    for (int i = 0; i < 3; ++i) {
        helper.start([&] {
            ran_on = std::this_thread::get_id();
            ++runs;
        });
        helper.wait();
    }
    CHECK(runs == 3);
    CHECK(ran_on != std::this_thread::get_id());
}

TEST_CASE("copy_thread: a task's exception reaches wait, once", "[sandbox]") {
    CopyThread helper;
    helper.start([] { throw std::runtime_error("copy failed"); });
    CHECK_THROWS_WITH(helper.wait(), "copy failed");
    helper.start([] {});
    CHECK_NOTHROW(helper.wait());
}

TEST_CASE("copy_thread: one task at a time", "[sandbox]") {
    CopyThread helper;
    std::atomic<bool> release{false};
    helper.start([&] {
        while (!release) std::this_thread::yield();
    });
    CHECK_THROWS_AS(helper.start([] {}), Error);
    release = true;
    helper.wait();
}
