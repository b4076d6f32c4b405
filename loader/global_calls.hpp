// What REDUCE, NEWOBJ, INST/OBJ and BUILD may do: each allowed global is bound
// to a built-in handler that builds inert data (tensors, OrderedDicts,
// records). Anything else is an error naming the global.
#pragma once

#include <cstddef>
#include <cstdint>

#include "loader/helper_thread.hpp"
#include "loader/limits.hpp"
#include "loader/object_arena.hpp"
#include "loader/policy.hpp"
#include "loader/storage_table.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

struct CallContext {
    const Policy& policy;
    const Limits& limits;
    StorageTable& storages;
    ObjectArena& arena;
    std::uint32_t next_tensor_id = 0;
    std::size_t offset = 0;  // byte offset of the opcode being run, for messages
    std::uint64_t tensors_built = 0;
    HelperThread* helper = nullptr;  // lent by the caller; may be null
};

// REDUCE (and INST/OBJ): callee(*args).
[[nodiscard]] ValuePtr call_global(const GlobalValue& callee, const ValuePtr& args,
                                   CallContext& ctx);
// NEWOBJ: cls.__new__(cls, *args); NEWOBJ_EX adds `kwargs` (a dict; null for
// NEWOBJ), which only an inert reference may take.
[[nodiscard]] ValuePtr new_object(const GlobalValue& cls, const ValuePtr& args,
                                  const ValuePtr& kwargs, CallContext& ctx);
// BUILD: target.__setstate__(state) for the few targets that allow it.
void build(const ValuePtr& target, const ValuePtr& state, CallContext& ctx);

[[noreturn]] void fail_at(const CallContext& ctx, ErrorCode code, const std::string& message);

}  // namespace picklejail::loader
