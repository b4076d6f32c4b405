#include "loader/pickle_memo.hpp"

#include <algorithm>

namespace picklejail::loader {

bool PickleMemo::mark_used(std::uint64_t index) {
    if (index >= kDenseLimit) return used_high_.insert(index).second;
    const auto slot = static_cast<std::size_t>(index);
    // Slots come in order: grow by doubling, not by one bit per new slot.
    if (slot >= used_low_.size()) used_low_.resize(std::max(slot + 1, 2 * used_low_.size()));
    if (used_low_[slot]) return false;
    used_low_[slot] = true;
    return true;
}

bool PickleMemo::contains(std::uint64_t index) const {
    if (index >= kDenseLimit) return used_high_.contains(index);
    const auto slot = static_cast<std::size_t>(index);
    return slot < used_low_.size() && used_low_[slot];
}

bool PickleMemo::put(std::uint64_t index, const ValuePtr& value) {
    const bool added = mark_used(index);
    if (added) ++used_count_;
    if (!reads_.may_read(index)) return added;
    if (index >= kDenseLimit) {
        kept_high_[index] = value;
        return added;
    }
    const auto slot = static_cast<std::size_t>(index);
    if (slot >= kept_low_.size()) kept_low_.resize(slot + 1);
    kept_low_[slot] = value;
    return added;
}

PickleMemo::Lookup PickleMemo::get(std::uint64_t index, ValuePtr& out) const {
    if (!contains(index)) return Lookup::never_stored;
    if (index >= kDenseLimit) {
        const auto it = kept_high_.find(index);
        if (it == kept_high_.end()) return Lookup::not_kept;
        out = it->second;
        return Lookup::found;
    }
    const auto slot = static_cast<std::size_t>(index);
    if (slot >= kept_low_.size() || !kept_low_[slot]) return Lookup::not_kept;
    out = kept_low_[slot];
    return Lookup::found;
}

}  // namespace picklejail::loader
