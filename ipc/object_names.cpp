#include "ipc/object_names.hpp"

#include <nlohmann/json.hpp>
#include <vector>

namespace picklejail::ipc {

ObjectNames object_names(std::string_view description) {
    ObjectNames names;
    if (description.empty()) return names;
    const auto root = nlohmann::json::parse(description, nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) return names;
    std::vector<const nlohmann::json*> pending{&root};
    while (!pending.empty()) {
        const nlohmann::json& node = *pending.back();
        pending.pop_back();
        if (node.is_object()) {
            if (const auto it = node.find("object"); it != node.end() && it->is_string())
                names.records.insert(it->get<std::string>());
            if (const auto it = node.find("global"); it != node.end() && it->is_string())
                names.references.insert(it->get<std::string>());
        }
        if (node.is_structured()) {
            for (const auto& child : node) pending.push_back(&child);
        }
    }
    return names;
}

}  // namespace picklejail::ipc
