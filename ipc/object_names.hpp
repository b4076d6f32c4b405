// The record classes and references an image's object description names
// (docs/output-format.md: {"object": "module.qualname", ...} nodes and
// {"global": "module.qualname"} nodes). What `inspect` lists and what the C++
// client hands back as data; nothing here resolves a name.
#pragma once

#include <set>
#include <string>
#include <string_view>

namespace picklejail::ipc {

struct ObjectNames {
    std::set<std::string> records;     // classes of objects kept as data
    std::set<std::string> references;  // globals held by name (classes, enum members)
};

// Empty for an empty or unparsable description. Iterative: the description
// comes from a worker, and its nesting is not ours to trust.
[[nodiscard]] ObjectNames object_names(std::string_view description);

}  // namespace picklejail::ipc
