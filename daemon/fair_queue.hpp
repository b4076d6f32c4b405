// Work waiting for a shared resource (worker slots, blocking threads), kept
// per uid and handed out fairly: the next item goes to the uid with the
// fewest items running, ties to the uid served longest ago. One uid's backlog
// therefore never sits in front of another uid's first request. Pure
// bookkeeping, no I/O: the worker pool and the blocking pool both use it.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <utility>

namespace picklejail::daemon {

template <typename Item>
class FairQueue {
  public:
    struct Limits {
        std::size_t max_queued = 1024;  // items waiting, all uids together
        std::size_t max_per_uid = 64;   // one uid's items, waiting and running
        std::size_t max_running_per_uid = std::numeric_limits<std::size_t>::max();
    };
    enum class Admission { admitted, uid_full, queue_full };

    explicit FairQueue(Limits limits) : limits_(limits) {}

    // Adds `item` at the back of `uid`'s queue unless a limit is reached.
    [[nodiscard]] Admission push(uid_t uid, Item item) {
        auto& account = accounts_[uid];
        if (account.waiting.size() + account.running >= limits_.max_per_uid) {
            forget_if_idle(uid);
            return Admission::uid_full;
        }
        if (queued_ >= limits_.max_queued) {
            forget_if_idle(uid);
            return Admission::queue_full;
        }
        account.waiting.push_back(std::move(item));
        ++queued_;
        return Admission::admitted;
    }

    // Takes the next item to start and counts it as running for its uid.
    [[nodiscard]] std::optional<std::pair<uid_t, Item>> pop() {
        Account* best = nullptr;
        uid_t best_uid = 0;
        for (auto& [uid, account] : accounts_) {
            if (account.waiting.empty() || account.running >= limits_.max_running_per_uid) continue;
            if (best == nullptr || account.running < best->running ||
                (account.running == best->running && account.last_served < best->last_served)) {
                best = &account;
                best_uid = uid;
            }
        }
        if (best == nullptr) return std::nullopt;
        Item item = std::move(best->waiting.front());
        best->waiting.pop_front();
        --queued_;
        ++best->running;
        best->last_served = ++serial_;
        return std::pair<uid_t, Item>(best_uid, std::move(item));
    }

    // An item of `uid` handed out by pop() has ended.
    void finished(uid_t uid) {
        const auto it = accounts_.find(uid);
        if (it == accounts_.end() || it->second.running == 0) return;
        --it->second.running;
        forget_if_idle(uid);
    }

    // Removes a waiting item (a request cancelled before it started).
    template <typename Predicate>
    bool remove_waiting(uid_t uid, Predicate matches) {
        const auto it = accounts_.find(uid);
        if (it == accounts_.end()) return false;
        auto& waiting = it->second.waiting;
        const auto found = std::find_if(waiting.begin(), waiting.end(), matches);
        if (found == waiting.end()) return false;
        waiting.erase(found);
        --queued_;
        forget_if_idle(uid);
        return true;
    }

    // Every waiting item, in no particular order; the queue is left empty.
    [[nodiscard]] std::deque<Item> take_all_waiting() {
        std::deque<Item> all;
        for (auto& [uid, account] : accounts_) {
            for (auto& item : account.waiting) all.push_back(std::move(item));
            account.waiting.clear();
        }
        queued_ = 0;
        std::erase_if(accounts_, [](const auto& entry) { return entry.second.running == 0; });
        return all;
    }

    [[nodiscard]] std::size_t queued() const noexcept { return queued_; }
    [[nodiscard]] std::size_t running(uid_t uid) const {
        const auto it = accounts_.find(uid);
        return it == accounts_.end() ? 0 : it->second.running;
    }
    [[nodiscard]] std::size_t waiting(uid_t uid) const {
        const auto it = accounts_.find(uid);
        return it == accounts_.end() ? 0 : it->second.waiting.size();
    }
    [[nodiscard]] std::size_t uids() const noexcept { return accounts_.size(); }
    [[nodiscard]] const Limits& limits() const noexcept { return limits_; }

  private:
    struct Account {
        std::deque<Item> waiting;
        std::size_t running = 0;
        std::uint64_t last_served = 0;  // 0: never, so a newcomer goes first
    };
    void forget_if_idle(uid_t uid) {
        const auto it = accounts_.find(uid);
        if (it != accounts_.end() && it->second.running == 0 && it->second.waiting.empty())
            accounts_.erase(it);
    }

    Limits limits_;
    std::map<uid_t, Account> accounts_;
    std::size_t queued_ = 0;
    std::uint64_t serial_ = 0;
};

}  // namespace picklejail::daemon
