// Per-uid connection slots and unread-reply budgets (daemon/uid_accounts.hpp).
#include <catch2/catch.hpp>

#include "daemon/uid_accounts.hpp"

using picklejail::daemon::UidAccounts;

TEST_CASE("uid accounts: connection slots are per uid and come back when dropped") {
    UidAccounts accounts({2, 100});
    auto a = accounts.open_connection(1);
    auto b = accounts.open_connection(1);
    REQUIRE(a);
    REQUIRE(b);
    CHECK_FALSE(accounts.open_connection(1));
    auto other = accounts.open_connection(2);  // another uid is not affected
    CHECK(other);
    a.reset();
    CHECK(accounts.connections(1) == 1);
    CHECK(accounts.open_connection(1));
    // Moving a share moves the slot, it does not duplicate it.
    UidAccounts::Share moved = std::move(*b);
    b.reset();
    CHECK(accounts.connections(1) == 1);
    moved.release();
    CHECK(accounts.connections(1) == 0);
}

TEST_CASE("uid accounts: a spent reply budget holds requests until bytes are read") {
    UidAccounts accounts({8, 1000});
    auto first = accounts.charge_reply(1, 600);
    CHECK_FALSE(accounts.reply_budget_spent(1));
    auto second = accounts.charge_reply(1, 600);
    CHECK(accounts.reply_budget_spent(1));
    CHECK_FALSE(accounts.reply_budget_spent(2));
    int woken = 0;
    accounts.wait_for_reply_budget(1, [&woken] { ++woken; });
    accounts.wait_for_reply_budget(1, [&woken] { ++woken; });
    first.release();  // 600 left: under the budget
    CHECK(woken == 2);
    CHECK(accounts.reply_bytes(1) == 600);
    second.release();
    CHECK(accounts.reply_bytes(1) == 0);
    CHECK(woken == 2);
}

TEST_CASE("uid accounts: shares outliving the accounts do nothing") {
    std::optional<UidAccounts::Share> share;
    {
        UidAccounts accounts({1, 1});
        share = accounts.open_connection(5);
        REQUIRE(share);
    }
    share->release();  // no crash, nothing to return to
}
