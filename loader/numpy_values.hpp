// numpy objects that training checkpoints carry (the `checkpoint` policy):
// dtypes, scalars and arrays, rebuilt from their pickled state as data.
#pragma once

#include <vector>

#include "loader/global_calls.hpp"

namespace picklejail::loader {

[[nodiscard]] ValuePtr numpy_reconstruct(const GlobalValue& callee,
                                         const std::vector<ValuePtr>& args, CallContext& ctx);
[[nodiscard]] ValuePtr numpy_dtype(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                                   CallContext& ctx);
[[nodiscard]] ValuePtr numpy_scalar(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                                    CallContext& ctx);
[[nodiscard]] bool is_numpy_record(const RecordValue& record) noexcept;
// BUILD on an ndarray or dtype record; an array becomes a tensor when the policy says so.
void numpy_build(const ValuePtr& target, const ValuePtr& state, CallContext& ctx);

}  // namespace picklejail::loader
