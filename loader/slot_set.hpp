// A set of memo slot numbers. Writers number slots 0, 1, 2, ...: below
// kDenseLimit a bitmap holds them (grown by doubling, at most 256 KiB);
// the numbers a hostile file scatters above it go to a hash set.
#pragma once

#include <algorithm>
#include <cstdint>
#include <unordered_set>
#include <vector>

namespace picklejail::loader {

class SlotSet {
  public:
    static constexpr std::uint64_t kDenseLimit = std::uint64_t{1} << 20;

    // True when `slot` was not in the set before.
    bool insert(std::uint64_t slot) {
        if (slot >= kDenseLimit) {
            if (!sparse_.insert(slot).second) return false;
        } else {
            const auto bit = static_cast<std::size_t>(slot);
            if (bit >= dense_.size()) dense_.resize(std::max(bit + 1, 2 * dense_.size()));
            if (dense_[bit]) return false;
            dense_[bit] = true;
        }
        ++size_;
        return true;
    }

    [[nodiscard]] bool contains(std::uint64_t slot) const {
        if (slot >= kDenseLimit) return sparse_.contains(slot);
        const auto bit = static_cast<std::size_t>(slot);
        return bit < dense_.size() && dense_[bit];
    }

    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

  private:
    std::uint64_t size_ = 0;
    std::vector<bool> dense_;
    std::unordered_set<std::uint64_t> sparse_;
};

}  // namespace picklejail::loader
