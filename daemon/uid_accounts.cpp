#include "daemon/uid_accounts.hpp"

#include <utility>

namespace picklejail::daemon {

struct Account {
    unsigned connections = 0;
    std::uint64_t reply_bytes = 0;
    std::vector<std::function<void()>> waiting_for_budget;
};

struct AccountsState {
    UidAccounts::Limits limits;
    std::map<uid_t, Account> accounts;

    void forget_if_empty(uid_t uid) {
        const auto it = accounts.find(uid);
        if (it != accounts.end() && it->second.connections == 0 && it->second.reply_bytes == 0 &&
            it->second.waiting_for_budget.empty()) {
            accounts.erase(it);
        }
    }
};

UidAccounts::Share& UidAccounts::Share::operator=(Share&& other) noexcept {
    if (this != &other) {
        release();
        state_ = std::move(other.state_);
        uid_ = other.uid_;
        kind_ = other.kind_;
        amount_ = std::exchange(other.amount_, 0);
        other.state_.reset();
    }
    return *this;
}

void UidAccounts::Share::release() noexcept {
    const auto state = state_.lock();
    state_.reset();
    if (!state) return;
    auto& account = state->accounts[uid_];
    std::vector<std::function<void()>> wake;
    if (kind_ == Kind::connection) {
        if (account.connections > 0) --account.connections;
    } else {
        account.reply_bytes -= std::min(account.reply_bytes, amount_);
        if (account.reply_bytes < state->limits.max_reply_bytes_per_uid)
            wake.swap(account.waiting_for_budget);
    }
    amount_ = 0;
    state->forget_if_empty(uid_);
    for (auto& callback : wake) callback();
}

UidAccounts::UidAccounts(Limits limits) : state_(std::make_shared<AccountsState>()) {
    state_->limits = limits;
}

std::optional<UidAccounts::Share> UidAccounts::open_connection(uid_t uid) {
    auto& account = state_->accounts[uid];
    if (account.connections >= state_->limits.max_connections_per_uid) {
        state_->forget_if_empty(uid);
        return std::nullopt;
    }
    ++account.connections;
    Share share;
    share.state_ = state_;
    share.uid_ = uid;
    share.kind_ = Share::Kind::connection;
    share.amount_ = 1;
    return share;
}

UidAccounts::Share UidAccounts::charge_reply(uid_t uid, std::uint64_t bytes) {
    state_->accounts[uid].reply_bytes += bytes;
    Share share;
    share.state_ = state_;
    share.uid_ = uid;
    share.kind_ = Share::Kind::reply_bytes;
    share.amount_ = bytes;
    return share;
}

bool UidAccounts::reply_budget_spent(uid_t uid) const {
    const auto it = state_->accounts.find(uid);
    return it != state_->accounts.end() &&
           it->second.reply_bytes >= state_->limits.max_reply_bytes_per_uid;
}

void UidAccounts::wait_for_reply_budget(uid_t uid, std::function<void()> wake) {
    state_->accounts[uid].waiting_for_budget.push_back(std::move(wake));
}

unsigned UidAccounts::connections(uid_t uid) const {
    const auto it = state_->accounts.find(uid);
    return it == state_->accounts.end() ? 0 : it->second.connections;
}

std::uint64_t UidAccounts::reply_bytes(uid_t uid) const {
    const auto it = state_->accounts.find(uid);
    return it == state_->accounts.end() ? 0 : it->second.reply_bytes;
}

const UidAccounts::Limits& UidAccounts::limits() const noexcept {
    return state_->limits;
}

}  // namespace picklejail::daemon
