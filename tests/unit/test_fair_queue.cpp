// The scheduler's order (daemon/fair_queue.hpp): per-uid queues, the next
// item to the uid with the fewest running, a newcomer before a backlog.
#include <catch2/catch.hpp>

#include "daemon/fair_queue.hpp"

using picklejail::daemon::FairQueue;
using Queue = FairQueue<int>;

TEST_CASE("fair queue: a second uid's first item goes before the first uid's backlog") {
    Queue queue({100, 100});
    for (int i = 0; i < 8; ++i) REQUIRE(queue.push(1000, i) == Queue::Admission::admitted);
    // Two slots: uid 1000 takes both while it is alone.
    auto first = queue.pop();
    auto second = queue.pop();
    REQUIRE(first);
    REQUIRE(second);
    CHECK(first->first == 1000);
    CHECK(second->first == 1000);
    REQUIRE(queue.push(2000, 99) == Queue::Admission::admitted);
    queue.finished(1000);  // one slot frees
    const auto next = queue.pop();
    REQUIRE(next);
    CHECK(next->first == 2000);  // not the 3rd of uid 1000's backlog
    CHECK(next->second == 99);
    CHECK(queue.running(1000) == 1);
    CHECK(queue.running(2000) == 1);
}

TEST_CASE("fair queue: each uid's items come out in its own order") {
    Queue queue({100, 100});
    for (int i = 0; i < 4; ++i) REQUIRE(queue.push(1, i) == Queue::Admission::admitted);
    for (int i = 10; i < 14; ++i) REQUIRE(queue.push(2, i) == Queue::Admission::admitted);
    std::vector<int> from_one;
    std::vector<int> from_two;
    std::vector<uid_t> order;
    while (auto next = queue.pop()) {
        order.push_back(next->first);
        (next->first == 1 ? from_one : from_two).push_back(next->second);
        queue.finished(next->first);
    }
    CHECK(from_one == std::vector<int>{0, 1, 2, 3});
    CHECK(from_two == std::vector<int>{10, 11, 12, 13});
    // With one slot, served alternately: least recently served first.
    CHECK(order == std::vector<uid_t>{1, 2, 1, 2, 1, 2, 1, 2});
}

TEST_CASE("fair queue: limits per uid and in total") {
    Queue queue({3, 2});
    CHECK(queue.push(1, 0) == Queue::Admission::admitted);
    CHECK(queue.push(1, 1) == Queue::Admission::admitted);
    CHECK(queue.push(1, 2) == Queue::Admission::uid_full);
    CHECK(queue.push(2, 3) == Queue::Admission::admitted);
    CHECK(queue.push(3, 4) == Queue::Admission::queue_full);
    // Running items count against the uid, not against the waiting total.
    auto popped = queue.pop();
    REQUIRE(popped);
    CHECK(queue.push(popped->first, 5) == Queue::Admission::uid_full);
    CHECK(queue.push(3, 6) == Queue::Admission::admitted);
    CHECK(queue.queued() == 3);
}

TEST_CASE("fair queue: a uid at its running cap waits while others are served") {
    Queue queue({100, 100, 1});
    REQUIRE(queue.push(1, 0) == Queue::Admission::admitted);
    REQUIRE(queue.push(1, 1) == Queue::Admission::admitted);
    REQUIRE(queue.push(2, 2) == Queue::Admission::admitted);
    auto a = queue.pop();
    auto b = queue.pop();
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->first != b->first);
    CHECK_FALSE(queue.pop());  // uid 1's second item waits for its first to end
    queue.finished(1);
    auto c = queue.pop();
    REQUIRE(c);
    CHECK(c->first == 1);
    CHECK(c->second == 1);
}

TEST_CASE("fair queue: removing a waiting item and taking everything") {
    Queue queue({100, 100});
    for (int i = 0; i < 3; ++i) REQUIRE(queue.push(7, i) == Queue::Admission::admitted);
    CHECK(queue.remove_waiting(7, [](int v) { return v == 1; }));
    CHECK_FALSE(queue.remove_waiting(7, [](int v) { return v == 1; }));
    CHECK_FALSE(queue.remove_waiting(8, [](int) { return true; }));
    CHECK(queue.queued() == 2);
    auto all = queue.take_all_waiting();
    CHECK(all.size() == 2);
    CHECK(queue.queued() == 0);
    CHECK_FALSE(queue.pop());
    CHECK(queue.uids() == 0);
}
