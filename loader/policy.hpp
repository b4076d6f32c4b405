// A policy maps exact global names ("module.qualname") to built-in handlers.
// Policies are data (policies/*.json); no wildcard over a module exists.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loader/handler.hpp"

namespace picklejail::loader {

class Policy {
  public:
    // Parses {"name":..., "description":..., "extends":"base"?, "globals":{name: handler},
    // "numpy_arrays_as_tensors": bool?}. `base` supplies the globals of "extends"
    // (the caller resolves the name; the loader opens no files).
    // Throws Error(invalid_request) on any schema error.
    [[nodiscard]] static Policy from_json(std::string_view json_text, const Policy* base = nullptr);

    // The extends target named in the text, if any, so a caller can load it first.
    [[nodiscard]] static std::optional<std::string> extends_of(std::string_view json_text);

    // Python 2 and old-torch module names are mapped first (__builtin__ → builtins,
    // copy_reg → copyreg, torch.tensor → torch._tensor), as CPython and torch do.
    [[nodiscard]] std::optional<Handler> resolve(std::string_view module,
                                                 std::string_view name) const;

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    [[nodiscard]] const std::map<std::string, Handler, std::less<>>& globals() const noexcept {
        return globals_;
    }
    [[nodiscard]] bool numpy_arrays_as_tensors() const noexcept { return numpy_arrays_as_tensors_; }

    // "inert": a global the policy does not bind becomes a named reference
    // (REDUCE/NEWOBJ/BUILD on it make inert records) instead of forbidden_global.
    [[nodiscard]] bool inert() const noexcept { return inert_; }

    // The "refused" entry that `full_name` ("module.qualname", canonical) falls
    // under: equal to it, or it followed by '.'. Checked before any binding, and
    // on every reference getattr makes, so a refused name is never data.
    [[nodiscard]] std::optional<std::string> refusal(std::string_view full_name) const;

  private:
    std::string name_;
    std::map<std::string, Handler, std::less<>> globals_;
    bool numpy_arrays_as_tensors_ = false;
    bool inert_ = false;
    std::vector<std::string> refused_;  // "refused": modules and globals, as dotted prefixes
};

// A global as Python 3 resolves it: Python 2 names (`__builtin__.long`,
// `cPickle.loads`) mapped as pickle's _compat_pickle maps them, and torch's
// own module renames.
struct CanonicalGlobal {
    std::string module;
    std::string name;

    [[nodiscard]] std::string full() const { return module + "." + name; }
};
[[nodiscard]] CanonicalGlobal canonical_global(std::string_view module, std::string_view name);

// canonical_global(module, name).full(): "module.name".
[[nodiscard]] std::string canonical_global_name(std::string_view module, std::string_view name);

}  // namespace picklejail::loader
