#include <cstdio>
#include <nlohmann/json.hpp>

#include "client/cli/commands.hpp"
#include "client/cli/conversion_job.hpp"
#include "client/cli/report_error.hpp"

namespace picklejail::cli {
namespace {

std::string shape_text(const std::vector<std::uint64_t>& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i)
        out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

nlohmann::ordered_json inspect_json(const LoadedCheckpoint& loaded) {
    const auto& conversion = loaded.conversion;
    nlohmann::ordered_json out;
    out["format"] = loader::to_string(conversion.format());
    out["pickle_protocol"] = conversion.pickle_protocol();
    out["policy"] = loaded.policy_name;
    out["globals"] = conversion.globals();
    out["tensors"] = nlohmann::ordered_json::array();
    for (const auto& t : conversion.layout().tensors()) {
        out["tensors"].push_back({{"name", t.source.name},
                                  {"dtype", t.safetensors_dtype},
                                  {"shape", t.written_shape},
                                  {"bytes", t.end - t.begin}});
    }
    nlohmann::ordered_json aliases = nlohmann::ordered_json::object();
    for (const auto& [key, value] : conversion.metadata()) {
        if (!key.starts_with("picklejail.") && key != "format") aliases[key] = value;
    }
    out["aliases"] = aliases;
    out["output_bytes"] = conversion.output_size();
    return out;
}

void print_text(const nlohmann::ordered_json& report) {
    std::printf("format: %s (pickle protocol %d)\n", report["format"].get<std::string>().c_str(),
                report["pickle_protocol"].get<int>());
    std::printf("policy: %s\n", report["policy"].get<std::string>().c_str());
    std::printf("globals:\n");
    for (const auto& g : report["globals"]) std::printf("  %s\n", g.get<std::string>().c_str());
    std::printf("tensors: %zu (%llu bytes of safetensors output)\n", report["tensors"].size(),
                static_cast<unsigned long long>(report["output_bytes"].get<std::uint64_t>()));
    for (const auto& t : report["tensors"]) {
        std::printf("  %-40s %-8s %-20s %llu\n", t["name"].get<std::string>().c_str(),
                    t["dtype"].get<std::string>().c_str(),
                    shape_text(t["shape"].get<std::vector<std::uint64_t>>()).c_str(),
                    static_cast<unsigned long long>(t["bytes"].get<std::uint64_t>()));
    }
    for (const auto& [alias, kept] : report["aliases"].items()) {
        std::printf("  %-40s alias of %s\n", alias.c_str(), kept.get<std::string>().c_str());
    }
}

}  // namespace

int run_inspect(const CommonOptions& common, const InspectOptions& options) {
    return report_errors([&] {
        const auto loaded = load_checkpoint(common, options.input);
        const auto report = inspect_json(loaded);
        if (options.json) {
            std::printf("%s\n", report.dump(2).c_str());
        } else {
            print_text(report);
        }
    });
}

}  // namespace picklejail::cli
