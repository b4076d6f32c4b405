// picklejaild's configuration: a JSON file, then command-line flags on top.
// Every limit has a documented default (docs/protocol.md, docs/security.md).
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

namespace picklejail::daemon {

struct Config {
    std::filesystem::path socket_path = "/run/picklejail/picklejail.sock";
    mode_t socket_mode = 0666;         // who may connect; access is decided per request
    std::filesystem::path policy_dir;  // empty: sandbox::default_policy_dir()
    std::filesystem::path worker;      // empty: sandbox::default_worker_path()
    std::string default_policy = "weights";

    unsigned max_workers = 0;  // 0: the number of cores
    unsigned max_queue = 64;
    unsigned max_requests_per_uid = 8;
    unsigned max_connections = 1024;
    std::uint64_t max_shm_bytes_per_uid = 8ULL << 30;
    std::uint64_t max_input_bytes = 64ULL << 30;
    std::uint64_t max_output_bytes = 64ULL << 30;
    std::chrono::milliseconds deadline{120'000};
    std::uint64_t worker_memory_bytes = 0;  // RLIMIT_AS per worker; 0: 2 × input + 1 GiB
    std::chrono::seconds shm_ttl{60};
    std::string loader_limits_json;  // overrides of loader::Limits, as JSON text

    std::uint64_t cache_bytes = 0;  // shared image cache; 0 turns it off
};

// Reads a JSON object whose keys are the field names above (durations as
// "deadline_s" / "shm_ttl_s", "socket_mode" as an octal string, "loader_limits"
// as an object). Unknown keys throw Error(invalid_request).
[[nodiscard]] Config config_from_json(const std::string& json_text, Config base = {});

// The number of concurrent workers to allow when max_workers is 0.
[[nodiscard]] unsigned effective_max_workers(const Config& config);

}  // namespace picklejail::daemon
