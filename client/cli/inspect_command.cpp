#include <cstdio>
#include <nlohmann/json.hpp>

#include "client/cli/backend.hpp"
#include "client/cli/commands.hpp"
#include "client/cli/report_error.hpp"
#include "client/cli/sandboxed_job.hpp"
#include "ipc/file_mapping.hpp"
#include "ipc/image_summary.hpp"
#include "ipc/memfd.hpp"
#include "ipc/safetensors_check.hpp"
#include "loader/checkpoint_loader.hpp"

namespace picklejail::cli {
namespace {

std::string shape_text(const std::vector<std::uint64_t>& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i)
        out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

void print_text(const nlohmann::json& report) {
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
    // Objects kept as data (checkpoint, inert): what a client will see as
    // picklejail.Record and picklejail.Global.
    if (!report["records"].empty()) std::printf("records:\n");
    for (const auto& r : report["records"]) std::printf("  %s\n", r.get<std::string>().c_str());
    if (!report["references"].empty()) std::printf("references:\n");
    for (const auto& g : report["references"]) std::printf("  %s\n", g.get<std::string>().c_str());
}

}  // namespace

int run_inspect(const CommonOptions& common, const InspectOptions& options) {
    return report_errors([&] {
        const auto report = inspect_checkpoint(common, options.input);
        if (options.json) {
            std::printf("%s\n", report.dump(2).c_str());
        } else {
            print_text(report);
        }
    });
}

}  // namespace picklejail::cli
