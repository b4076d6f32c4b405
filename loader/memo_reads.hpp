// Which memo slots a pickle ever reads, found by walking its opcodes once
// without running them. Writers memoize nearly every object (torch.save puts
// every tuple of every tensor in the memo), yet read back only a handful: the
// VM stores only the slots some GET reads, so the rest of what it builds is
// freed once consumed (for a 20,000-tensor state dict, most of its objects).
#pragma once

#include <cstdint>
#include <span>

#include "loader/slot_set.hpp"

namespace picklejail::loader {

class MemoReads {
  public:
    // Walks to the first STOP. Where the walk cannot follow the opcodes (a
    // truncated operand, an unknown opcode), every slot counts as read: the
    // VM reports the fault itself when it gets there.
    [[nodiscard]] static MemoReads scan(std::span<const std::byte> pickle);

    [[nodiscard]] bool may_read(std::uint64_t index) const noexcept;

  private:
    bool all_ = false;
    SlotSet read_;
};

}  // namespace picklejail::loader
