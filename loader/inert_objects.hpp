// The inert policy's objects: references to globals the policy does not bind,
// records made by calling or instantiating them, getattr on either, and
// copyreg's protocol 0/1 reconstructor. Nothing named is ever imported or
// called; a name matters only because a client might resolve it later, so
// refused names (and dunder attributes, the way to a module's internals)
// never become data.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "loader/global_calls.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

// malformed unless `text` can be part of a reference's name: valid UTF-8,
// not empty, no whitespace or control characters (they would reach clients
// and messages), and no '.' when `dots` is false (a getattr attribute).
void check_name_text(std::string_view text, bool dots, std::string_view what,
                     const CallContext& ctx);

// forbidden_global unless `full_name` may be held as a reference under the
// policy: not under a "refused" entry and no dunder attribute in its qualname
// (`qualname_start`: where the qualname begins in `full_name`). Messages name
// it as `shown_as` when given (the file's own spelling, for renamed globals).
void check_reference_name(std::string_view full_name, std::size_t qualname_start,
                          const CallContext& ctx, std::string_view shown_as = {});

// builtins.getattr(obj, name[, default]): a reference's attribute is the
// reference "module.qualname.name" (checked, then bound if the policy binds
// it); a record's is a bound-method record. Anything else is refused.
[[nodiscard]] ValuePtr inert_getattr(const GlobalValue& callee, const std::vector<ValuePtr>& args,
                                     CallContext& ctx);

// copyreg._reconstructor(cls, base, state): the record of `cls`, with `state`
// (when not None) as its single argument, as base.__new__(cls, state) takes it.
[[nodiscard]] ValuePtr inert_reconstruct(const GlobalValue& callee,
                                         const std::vector<ValuePtr>& args, CallContext& ctx);

}  // namespace picklejail::loader
