// The worker pool and in-flight coalescing (daemon/worker_pool.hpp,
// daemon/in_flight.hpp) with real workers on a real event loop: fair order
// across uids, cancellation, and endings that never re-enter the submitter
// or leave a request unanswered.
#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include "daemon/blocking_pool.hpp"
#include "daemon/in_flight.hpp"
#include "daemon/worker_pool.hpp"
#include "ipc/memfd.hpp"

using namespace picklejail;
using namespace picklejail::daemon;

namespace {

sandbox::SpawnOptions spin_options(std::chrono::milliseconds deadline) {
    sandbox::SpawnOptions options;
    options.worker = std::string(PICKLEJAIL_BINARY_DIR) + "/bin/picklejail-worker";
    options.selftest_act = "spin";  // runs until its deadline: a long job on demand
    options.deadline = deadline;
    return options;
}

ipc::UniqueFd empty_input() {
    return ipc::create_image_memfd("test-input");
}

// A conversion job (not a selftest act) on a pipe: the spawner refuses a
// non-regular input before any clone, so the launch fails at once.
sandbox::SpawnOptions conversion_options() {
    sandbox::SpawnOptions options;
    options.worker = std::string(PICKLEJAIL_BINARY_DIR) + "/bin/picklejail-worker";
    options.deadline = std::chrono::seconds(5);
    return options;
}

ipc::UniqueFd unlaunchable_input() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    ::close(fds[1]);
    return ipc::UniqueFd(fds[0]);
}

struct Fixture {
    boost::asio::io_context io;
    BlockingPool compute{io, {2, 2, 64, 64}};
};

}  // namespace

TEST_CASE("worker pool: a launch that fails at once is reported from a later handler", "[daemon]") {
    Fixture f;
    WorkerPool pool(f.io, f.compute, {1, 8, 8});
    int calls = 0;
    ErrorCode code = ErrorCode::ok;
    auto job =
        pool.submit(1000, unlaunchable_input(), conversion_options(), [&](JobOutcome outcome) {
            ++calls;
            code = outcome.result.status;
        });
    CHECK(calls == 0);  // never from inside submit()
    f.io.run();
    CHECK(calls == 1);
    CHECK(code == ErrorCode::io_error);
    CHECK(pool.idle());
}

TEST_CASE("worker pool: another uid's job runs before one uid's backlog", "[daemon]") {
    Fixture f;
    WorkerPool pool(f.io, f.compute, {1, 16, 16});
    std::vector<std::string> finished;
    const auto submit = [&](uid_t uid, const std::string& name) {
        return pool.submit(uid, empty_input(), spin_options(std::chrono::milliseconds(150)),
                           [&finished, name](JobOutcome outcome) {
                               CHECK(outcome.result.status == ErrorCode::timeout);
                               finished.push_back(name);
                           });
    };
    auto a1 = submit(1000, "a1");
    auto a2 = submit(1000, "a2");
    auto a3 = submit(1000, "a3");
    auto b1 = submit(2000, "b1");
    f.io.run();
    CHECK(finished == std::vector<std::string>{"a1", "b1", "a2", "a3"});
    CHECK(pool.started_total() == 4);
}

TEST_CASE("worker pool: a uid's share and the queue are limits; cancelled jobs end silently",
          "[daemon]") {
    Fixture f;
    WorkerPool pool(f.io, f.compute, {1, 3, 2});
    int calls = 0;
    const auto count = [&calls](const JobOutcome&) { ++calls; };
    auto running = pool.submit(1, empty_input(), spin_options(std::chrono::seconds(30)), count);
    auto waiting = pool.submit(1, empty_input(), spin_options(std::chrono::seconds(30)), count);
    try {
        (void)pool.submit(1, empty_input(), spin_options(std::chrono::seconds(30)), count);
        FAIL("a third job of a uid with a share of two was accepted");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::busy);
    }
    f.io.poll();  // the first job starts
    CHECK(pool.running() == 1);
    CHECK(pool.queued() == 1);
    waiting->cancel();
    CHECK(pool.queued() == 0);
    const auto start = std::chrono::steady_clock::now();
    running->cancel();  // kills the worker long before its 30 s deadline
    f.io.run();
    CHECK(calls == 0);
    CHECK(pool.idle());
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
}

TEST_CASE("in-flight: a conversion that cannot start leaves nothing for later requests to join",
          "[daemon]") {
    Fixture f;
    WorkerPool pool(f.io, f.compute, {1, 8, 8});
    InFlightConversions in_flight;
    const CacheKey key{FileIdentity{1, 2, 3, 4, 5}, "weights", 1, {}, false};
    // Refused outright (busy): the error goes to the caller, nothing stays registered.
    const auto refuse = [](const Job::Done&) -> std::shared_ptr<Job> {
        throw Error(ErrorCode::busy, "full");
    };
    CHECK_THROWS_AS(in_flight.start(key, refuse, nullptr, [](JobOutcome) {}), Error);
    CHECK(in_flight.size() == 0);
    // Accepted, then failing at launch: both recipients hear of it, and the
    // key is free again for the next request.
    std::vector<ErrorCode> heard;
    const auto submit = [&pool](Job::Done done) {
        return pool.submit(1, unlaunchable_input(), conversion_options(), std::move(done));
    };
    auto first = in_flight.start(key, submit, nullptr,
                                 [&heard](JobOutcome o) { heard.push_back(o.result.status); });
    auto second = in_flight.join(key, [&heard](JobOutcome o) { heard.push_back(o.result.status); });
    REQUIRE(second);
    f.io.run();
    CHECK(heard == std::vector<ErrorCode>{ErrorCode::io_error, ErrorCode::io_error});
    CHECK(in_flight.size() == 0);
    CHECK_FALSE(in_flight.join(key, [](JobOutcome) {}));
}

TEST_CASE("in-flight: the worker is killed when every recipient has left", "[daemon]") {
    Fixture f;
    WorkerPool pool(f.io, f.compute, {1, 8, 8});
    InFlightConversions in_flight;
    const CacheKey key{FileIdentity{1, 2, 3, 4, 5}, "weights", 1, {}, false};
    int delivered = 0;
    const auto submit = [&pool](Job::Done done) {
        return pool.submit(1, empty_input(), spin_options(std::chrono::seconds(30)),
                           std::move(done));
    };
    auto first = in_flight.start(key, submit, nullptr, [&](JobOutcome) { ++delivered; });
    auto second = in_flight.join(key, [&](JobOutcome) { ++delivered; });
    f.io.poll();
    CHECK(pool.running() == 1);
    first->cancel();
    CHECK(pool.running() == 1);  // one recipient is still waiting
    second->cancel();
    const auto start = std::chrono::steady_clock::now();
    f.io.run();
    CHECK(delivered == 0);
    CHECK(pool.idle());
    CHECK(in_flight.size() == 0);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
}
