// The `picklejail` command line: one function per subcommand.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace picklejail::cli {

struct CommonOptions {
    std::string policy = "weights";   // name in the policy dir, or a .json path
    std::string policy_dir;           // empty: sandbox::default_policy_dir()
    std::string limits_file;          // optional JSON overrides of loader limits
    unsigned deadline_seconds = 60;   // the worker is killed after this
    std::uint64_t memory_bytes = 0;   // worker address-space cap; 0: 2 × input + 1 GiB
    std::vector<std::string> select;  // tensor names or prefixes; empty: all
    int input_fd = -1;                // read the checkpoint from this inherited fd instead
    std::string socket;               // picklejaild socket; empty: $PICKLEJAIL_SOCKET or default
    bool local = false;               // never use the daemon
    bool map_file = false;            // convert --mmap: layout only for stored records
};

struct ConvertOptions {
    std::string input;
    std::string output;  // empty: input with its extension replaced by .safetensors
    int output_fd = -1;  // write into this inherited fd (a memfd is sealed) instead of a file
    bool json = false;   // print a JSON summary on stdout
};

struct InspectOptions {
    std::string input;
    bool json = false;
};

// Each returns the process exit status; failures print one line on stderr.
[[nodiscard]] int run_convert(const CommonOptions& common, const ConvertOptions& options);
[[nodiscard]] int run_inspect(const CommonOptions& common, const InspectOptions& options);
// Starts confined workers that each attempt one forbidden act; 0 when all were stopped.
[[nodiscard]] int run_selftest();

}  // namespace picklejail::cli
