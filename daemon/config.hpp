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

    unsigned max_workers = 0;            // 0: the number of cores
    unsigned max_queue = 1024;           // requests waiting for a worker, all uids
    unsigned max_requests_per_uid = 64;  // one uid's requests waiting or running
    unsigned max_connections = 1024;
    unsigned max_connections_per_uid = 64;
    std::uint64_t max_reply_bytes_per_uid = 256ULL << 20;  // replies queued, not yet read
    std::chrono::milliseconds line_timeout{10'000};        // to finish a request line once begun
    std::chrono::milliseconds write_timeout{30'000};       // a reply making no progress
    unsigned blocking_threads = 4;                         // opens, reaping, checks, shm copies
    std::uint64_t max_shm_bytes_per_uid = 8ULL << 30;
    std::uint64_t max_input_bytes = 64ULL << 30;
    std::uint64_t max_output_bytes = 64ULL << 30;
    std::chrono::milliseconds deadline{120'000};
    std::uint64_t worker_memory_bytes = 0;  // RLIMIT_AS per worker; 0: 2 × input + 1 GiB
    std::chrono::seconds shm_ttl{60};
    std::string shm_prefix = "picklejail";  // shm names: <prefix>-<uid>-<24 hex>
    std::string loader_limits_json;         // overrides of loader::Limits, as JSON text

    std::uint64_t cache_bytes = 0;  // shared image cache; 0 turns it off
};

// Reads a JSON object whose keys are the field names above (durations as
// "deadline_s" / "shm_ttl_s" / "line_timeout_s" / "write_timeout_s", or with
// "_ms", "socket_mode" as an octal string, "loader_limits" as an object,
// checked here as the workers will read it). Unknown keys and bad values
// throw Error(invalid_request), so a typo stops the daemon at start.
[[nodiscard]] Config config_from_json(const std::string& json_text, Config base = {});

// The number of concurrent workers to allow when max_workers is 0.
[[nodiscard]] unsigned effective_max_workers(const Config& config);

}  // namespace picklejail::daemon
