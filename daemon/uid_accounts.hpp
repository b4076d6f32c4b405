// What each uid holds in the daemon right now: open connections, and reply
// bytes queued for its connections that it has not read yet. Both are
// bounded per uid, so one user's floods and unread replies cost that user,
// not everyone. Handles are RAII: a closed connection or a written (or
// abandoned) reply gives its share back, whatever path it ends on.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

namespace picklejail::daemon {

class UidAccounts {
  public:
    struct Limits {
        unsigned max_connections_per_uid = 64;
        std::uint64_t max_reply_bytes_per_uid = 256ULL << 20;
    };

    // A share taken from one uid's account; returned on destruction.
    class Share {
      public:
        Share() = default;
        Share(const Share&) = delete;
        Share& operator=(const Share&) = delete;
        Share(Share&& other) noexcept { *this = std::move(other); }
        Share& operator=(Share&& other) noexcept;
        ~Share() { release(); }
        void release() noexcept;

      private:
        friend class UidAccounts;
        enum class Kind { connection, reply_bytes };
        std::weak_ptr<struct AccountsState> state_;
        uid_t uid_ = 0;
        Kind kind_ = Kind::connection;
        std::uint64_t amount_ = 0;
    };

    explicit UidAccounts(Limits limits);

    // A connection slot for `uid`, or nullopt when it holds its limit.
    [[nodiscard]] std::optional<Share> open_connection(uid_t uid);
    // Counts `bytes` of reply queued for `uid` (never refused: the reply exists).
    [[nodiscard]] Share charge_reply(uid_t uid, std::uint64_t bytes);
    // True while `uid`'s unread reply bytes are at or over its limit; its
    // sessions then hold further requests until `wake` is called (once, from
    // whichever share's release brings the account under the limit).
    [[nodiscard]] bool reply_budget_spent(uid_t uid) const;
    void wait_for_reply_budget(uid_t uid, std::function<void()> wake);

    [[nodiscard]] unsigned connections(uid_t uid) const;
    [[nodiscard]] std::uint64_t reply_bytes(uid_t uid) const;
    [[nodiscard]] const Limits& limits() const noexcept;

  private:
    std::shared_ptr<struct AccountsState> state_;
};

}  // namespace picklejail::daemon
