// Walks the loaded object: names every tensor by its path (nested dict keys
// and list/tuple indices joined with '.'), folds identical views into one
// stored tensor plus aliases, and describes everything else as JSON so a
// client can rebuild exactly what torch.load returns (docs/output-format.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "loader/limits.hpp"
#include "loader/storage_table.hpp"
#include "loader/value.hpp"

namespace picklejail::loader {

struct NamedTensor {
    std::string name;  // the name it is stored under
    TensorValue view;
};

struct FlattenedObject {
    std::vector<NamedTensor> tensors;            // one per distinct view
    std::map<std::string, std::string> aliases;  // alias name → stored name
    std::string description;                     // JSON text (docs/output-format.md)
};

// How a tensor under a dict key that cannot name it (a tuple, a tensor, a
// record) is treated: `strict` refuses it (unsupported); `positional` (the
// inert policy, whose optimizers key their state by Parameter) names it by the
// item's position, `path.#i`, and a tensor in the key itself `path.#i.key`.
enum class KeyNaming : std::uint8_t { strict, positional };

// `storages` gives each tensor's saved location ("cuda:0"), for the description.
[[nodiscard]] FlattenedObject flatten_object(const ValuePtr& root, const Limits& limits,
                                             const StorageTable& storages,
                                             KeyNaming key_naming = KeyNaming::strict);

}  // namespace picklejail::loader
