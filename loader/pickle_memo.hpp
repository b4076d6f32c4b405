// The pickle memo: which slots are in use (len(memo) counts them, MEMOIZE
// numbers by it) and the objects of the slots the pickle reads back. A slot
// no GET reads (memo_reads.hpp) costs a bit, not a reference: torch.save
// memoizes ~8 objects per tensor and reads back a handful in all.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "loader/memo_reads.hpp"
#include "loader/slot_set.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

class PickleMemo {
  public:
    explicit PickleMemo(std::span<const std::byte> pickle) : reads_(MemoReads::scan(pickle)) {}

    // memo[index] = value.
    void put(std::uint64_t index, const ValuePtr& value);

    enum class Lookup : std::uint8_t { found, never_stored, not_kept };
    // memo[index]: not_kept only if the scan missed a read the VM then made.
    [[nodiscard]] Lookup get(std::uint64_t index, ValuePtr& out) const;

    [[nodiscard]] bool contains(std::uint64_t index) const { return used_.contains(index); }
    [[nodiscard]] std::uint64_t size() const noexcept { return used_.size(); }  // len(memo)

  private:
    // The objects of read slots: a vector below SlotSet::kDenseLimit, where
    // writers number them, a hash map for the numbers a hostile file scatters.
    static constexpr std::uint64_t kDenseLimit = SlotSet::kDenseLimit;

    MemoReads reads_;
    SlotSet used_;
    std::vector<ValuePtr> kept_low_;
    std::unordered_map<std::uint64_t, ValuePtr> kept_high_;
};

}  // namespace picklejail::loader
