// The pickle memo: which slots are in use (len(memo) counts them, MEMOIZE
// numbers by it) and the objects of the slots the pickle reads back. A slot
// no GET reads (memo_reads.hpp) costs a bit, not a reference: torch.save
// memoizes ~8 objects per tensor and reads back a handful in all.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "loader/memo_reads.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

class PickleMemo {
  public:
    explicit PickleMemo(std::span<const std::byte> pickle) : reads_(MemoReads::scan(pickle)) {}

    // memo[index] = value. True when the slot was not in use before.
    bool put(std::uint64_t index, const ValuePtr& value);

    enum class Lookup : std::uint8_t { found, never_stored, not_kept };
    // memo[index]: not_kept only if the scan missed a read the VM then made.
    [[nodiscard]] Lookup get(std::uint64_t index, ValuePtr& out) const;

    [[nodiscard]] bool contains(std::uint64_t index) const;                    // index in memo
    [[nodiscard]] std::uint64_t size() const noexcept { return used_count_; }  // len(memo)

  private:
    [[nodiscard]] bool mark_used(std::uint64_t index);

    // Writers number slots 0, 1, 2, ...: below kDenseLimit a bitmap and a
    // vector serve them; indices a hostile file scatters go to the hash sets.
    static constexpr std::uint64_t kDenseLimit = std::uint64_t{1} << 20;

    MemoReads reads_;
    std::vector<bool> used_low_;
    std::unordered_set<std::uint64_t> used_high_;
    std::uint64_t used_count_ = 0;
    std::vector<ValuePtr> kept_low_;  // read slots below kDenseLimit
    std::unordered_map<std::uint64_t, ValuePtr> kept_high_;
};

}  // namespace picklejail::loader
