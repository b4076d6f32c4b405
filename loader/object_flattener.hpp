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

// What shape of object the description may have (docs/output-format.md).
// `tree` (weights, checkpoint: state dicts): a container reached twice is
// written twice, a cycle is malformed, and a tensor under a dict key that
// cannot name it (a tuple, a tensor) is unsupported. `graph` (inert: whole
// models, optimizers, omegaconf): shared containers are written once and
// referred to ({"shared": K} / {"ref": K}), cycles through mutable ones are
// kept, unhashable keys are malformed, and a tensor under a key that cannot
// name it is named by the item's position, `path.#i` (`path.#i.key` for a
// tensor that is the key: optimizers key their state by Parameter).
enum class ObjectShape : std::uint8_t { tree, graph };

// `storages` gives each tensor's saved location ("cuda:0"), for the description.
[[nodiscard]] FlattenedObject flatten_object(const ValuePtr& root, const Limits& limits,
                                             const StorageTable& storages,
                                             ObjectShape shape = ObjectShape::tree);

}  // namespace picklejail::loader
