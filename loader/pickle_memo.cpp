#include "loader/pickle_memo.hpp"

namespace picklejail::loader {

void PickleMemo::put(std::uint64_t index, const ValuePtr& value) {
    used_.insert(index);
    if (!reads_.may_read(index)) return;
    if (index >= kDenseLimit) {
        kept_high_[index] = value;
        return;
    }
    const auto slot = static_cast<std::size_t>(index);
    if (slot >= kept_low_.size()) kept_low_.resize(slot + 1);
    kept_low_[slot] = value;
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
