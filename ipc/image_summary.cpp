#include "ipc/image_summary.hpp"

#include <charconv>
#include <string_view>

#include "ipc/object_names.hpp"

namespace picklejail::ipc {
namespace {

std::string metadata_value(const SafetensorsIndex& index, std::string_view key) {
    const auto it = index.metadata.find(std::string(key));
    return it == index.metadata.end() ? std::string() : it->second;
}

}  // namespace

nlohmann::ordered_json image_summary(const SafetensorsIndex& index, const std::string& policy) {
    nlohmann::ordered_json out;
    out["format"] = metadata_value(index, "picklejail.source_format");
    int protocol = 0;
    const auto text = metadata_value(index, "picklejail.pickle_protocol");
    (void)std::from_chars(text.data(), text.data() + text.size(), protocol);
    out["pickle_protocol"] = protocol;
    out["policy"] = policy;
    out["globals"] =
        nlohmann::ordered_json::parse(metadata_value(index, "picklejail.globals"), nullptr, false);
    if (!out["globals"].is_array()) out["globals"] = nlohmann::ordered_json::array();
    out["tensors"] = nlohmann::ordered_json::array();
    for (const auto& t : index.tensors) {
        out["tensors"].push_back(
            {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"bytes", t.end - t.begin}});
    }
    nlohmann::ordered_json aliases = nlohmann::ordered_json::object();
    for (const auto& [key, value] : index.metadata) {
        if (!key.starts_with("picklejail.") && key != "format") aliases[key] = value;
    }
    out["aliases"] = aliases;
    const auto names = object_names(metadata_value(index, "picklejail.object"));
    out["records"] = names.records;
    out["references"] = names.references;
    out["output_bytes"] =
        index.data_offset + (index.tensors.empty() ? 0 : index.tensors.back().end);
    return out;
}

}  // namespace picklejail::ipc
