// The restricted pickle machine: opcodes → inert values. Protocols 0–5.
// GLOBAL, STACK_GLOBAL, INST and OBJ resolve only through the policy;
// REDUCE/NEWOBJ/BUILD act only on built-in handlers (global_calls.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "loader/global_calls.hpp"
#include "loader/pickle_memo.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

// Turns a persistent id (the value BINPERSID pops) into a value; the zip and
// legacy readers supply their own. Empty: persistent ids are refused.
using PersistentLoader = std::function<ValuePtr(const ValuePtr& pid, CallContext& ctx)>;

struct PickleInfo {
    int protocol = 0;                  // highest PROTO seen (0 when absent)
    std::vector<std::string> globals;  // every global named, first-seen order
    std::size_t end_offset = 0;        // bytes consumed, STOP included
};

class PickleVm {
  public:
    PickleVm(std::span<const std::byte> pickle, CallContext& ctx, PersistentLoader persistent);

    // Runs to STOP; the single remaining stack item is the result.
    [[nodiscard]] ValuePtr run();
    [[nodiscard]] const PickleInfo& info() const noexcept { return info_; }

  private:
    [[nodiscard]] bool step(std::uint8_t opcode);  // false at STOP

    void push(ValuePtr value);
    [[nodiscard]] ValuePtr pop();
    [[nodiscard]] ValuePtr& top();
    [[nodiscard]] std::vector<ValuePtr> pop_mark();
    void push_mark();

    void op_global(std::string_view module, std::string_view name);
    void op_stack_global();
    void op_inst(std::string_view module, std::string_view name);
    void op_obj();
    void op_reduce();
    void op_newobj(bool with_kwargs);
    void op_build();
    void op_persistent(const ValuePtr& pid);
    void op_setitems(std::vector<ValuePtr> items);
    void op_appends(std::vector<ValuePtr> items);
    void op_additems(std::vector<ValuePtr> items);
    void op_long(std::span<const std::byte> le_bytes);
    void op_text_int(std::string_view text);
    void op_text_long(std::string_view text);
    void op_text_float(std::string_view text);
    void op_text_string(std::string_view text);
    void op_text_unicode(std::string_view text);
    void check_frame(std::uint8_t opcode);
    void memo_put(std::uint64_t index);
    [[nodiscard]] ValuePtr make_int(std::int64_t value);
    template <typename T>
    [[nodiscard]] ValuePtr shared_scalar(ValuePtr& slot, T&& value) {
        if (!slot) return slot = ctx_.arena.make(std::forward<T>(value));
        ctx_.arena.count_object();  // max_objects still counts every value pushed
        return slot;
    }
    void memo_get(std::uint64_t index);

    void push_string(std::string_view utf8, std::string_view what);
    void push_bytes(std::span<const std::byte> bytes);
    [[nodiscard]] std::uint64_t checked_length(std::uint64_t length, std::string_view what) const;
    [[noreturn]] void fail(ErrorCode code, const std::string& message) const;

    std::span<const std::byte> pickle_;
    CallContext& ctx_;
    PersistentLoader persistent_;
    std::vector<ValuePtr> stack_;
    std::vector<std::size_t> marks_;
    PickleMemo memo_;
    // None, True, False, () and small ints are immutable and shared, as in
    // Python: a checkpoint pushes several per tensor.
    ValuePtr none_, true_, false_, empty_tuple_;
    std::array<ValuePtr, 256> small_ints_;
    PickleInfo info_;
    std::size_t opcode_offset_ = 0;
    std::size_t position_ = 0;
    std::size_t frame_end_ = 0;  // 0: not inside a FRAME
};

// True when the text is valid UTF-8 with no encoded surrogates.
[[nodiscard]] bool is_valid_utf8(std::string_view text) noexcept;

}  // namespace picklejail::loader
