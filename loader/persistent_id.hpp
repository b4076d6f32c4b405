// The persistent ids torch.save writes for storages:
//   zip:    ('storage', StorageClass, key, location, numel)
//   legacy: ('storage', StorageClass, key, location, numel, view_metadata)
//           ('module', cls, source_file, source) for each class of a pickled
//           nn.Module (torch.save(model) before 1.6): the class itself.
// Anything else is refused (CVE-2026-24747 used a tensor as a pid).
#pragma once

#include <string>

#include "loader/global_calls.hpp"

namespace picklejail::loader {

struct StoragePid {
    std::string key;
    DType dtype;
    std::uint64_t numel;
    std::string location;
    bool quantized = false;  // QInt8Storage ...: dtype is the integer representation
};

// A legacy ('module', cls, source_file, source) id: `cls`, already a value
// the policy admitted when GLOBAL named it (the source text is never used).
// Null for any other persistent id.
[[nodiscard]] ValuePtr legacy_module_class(const ValuePtr& pid);

[[nodiscard]] StoragePid parse_storage_pid(const ValuePtr& pid, std::size_t expected_arity,
                                           const CallContext& ctx);

}  // namespace picklejail::loader
