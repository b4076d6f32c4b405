#include "daemon/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.hpp"
#include "loader/limits.hpp"

namespace picklejail::daemon {
namespace {

[[noreturn]] void bad(const std::string& message) {
    throw Error(ErrorCode::invalid_request, "config: " + message);
}

std::uint64_t number(const nlohmann::json& value, const std::string& key) {
    if (!value.is_number_unsigned()) bad("\"" + key + "\" must be a non-negative integer");
    return value.get<std::uint64_t>();
}

unsigned small_number(const nlohmann::json& value, const std::string& key) {
    const auto n = number(value, key);
    if (n > 1'000'000) bad("\"" + key + "\" is out of range");
    return static_cast<unsigned>(n);
}

std::string text(const nlohmann::json& value, const std::string& key) {
    if (!value.is_string()) bad("\"" + key + "\" must be a string");
    return value.get<std::string>();
}

std::chrono::milliseconds seconds(const nlohmann::json& value, const std::string& key) {
    if (!value.is_number() || value.get<double>() < 0 || value.get<double>() > 1e7)
        bad("\"" + key + "\" must be a number of seconds");
    return std::chrono::milliseconds(static_cast<std::int64_t>(value.get<double>() * 1000.0));
}

// The shm prefix starts every object name the daemon creates and sweeps at start.
std::string shm_prefix(const nlohmann::json& value, const std::string& key) {
    auto prefix = text(value, key);
    const bool valid = !prefix.empty() && prefix.size() <= 64 &&
                       std::all_of(prefix.begin(), prefix.end(), [](char c) {
                           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                       });
    if (!valid) bad("\"" + key + "\" must be 1-64 characters of [a-z0-9_]");
    return prefix;
}

mode_t octal_mode(const std::string& value) {
    std::size_t used = 0;
    unsigned long mode = 0;
    try {
        mode = std::stoul(value, &used, 8);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size() || mode > 0777) bad("\"socket_mode\" must be octal, like \"0666\"");
    return static_cast<mode_t>(mode);
}

void apply(Config& c, const std::string& key, const nlohmann::json& v) {
    if (key == "socket")
        c.socket_path = text(v, key);
    else if (key == "socket_mode")
        c.socket_mode = octal_mode(text(v, key));
    else if (key == "policy_dir")
        c.policy_dir = text(v, key);
    else if (key == "worker")
        c.worker = text(v, key);
    else if (key == "default_policy")
        c.default_policy = text(v, key);
    else if (key == "max_workers")
        c.max_workers = small_number(v, key);
    else if (key == "max_queue")
        c.max_queue = small_number(v, key);
    else if (key == "max_requests_per_uid")
        c.max_requests_per_uid = small_number(v, key);
    else if (key == "max_connections")
        c.max_connections = small_number(v, key);
    else if (key == "max_connections_per_uid")
        c.max_connections_per_uid = small_number(v, key);
    else if (key == "max_reply_bytes_per_uid")
        c.max_reply_bytes_per_uid = number(v, key);
    else if (key == "line_timeout_s")
        c.line_timeout = seconds(v, key);
    else if (key == "write_timeout_s")
        c.write_timeout = seconds(v, key);
    else if (key == "blocking_threads")
        c.blocking_threads = small_number(v, key);
    else if (key == "shm_prefix")
        c.shm_prefix = shm_prefix(v, key);
    else if (key == "max_shm_bytes_per_uid")
        c.max_shm_bytes_per_uid = number(v, key);
    else if (key == "max_input_bytes")
        c.max_input_bytes = number(v, key);
    else if (key == "max_output_bytes")
        c.max_output_bytes = number(v, key);
    else if (key == "deadline_s")
        c.deadline = std::chrono::seconds(number(v, key));
    else if (key == "deadline_ms")
        c.deadline = std::chrono::milliseconds(number(v, key));
    else if (key == "worker_memory_bytes")
        c.worker_memory_bytes = number(v, key);
    else if (key == "shm_ttl_s")
        c.shm_ttl = std::chrono::seconds(number(v, key));
    else if (key == "cache_bytes")
        c.cache_bytes = number(v, key);
    else if (key == "loader_limits") {
        if (!v.is_object()) bad("\"loader_limits\" must be an object");
        try {
            (void)loader::limits_from_json(v.dump());
        } catch (const Error& e) {
            bad(std::string("\"loader_limits\": ") + e.what());
        }
        c.loader_limits_json = v.dump();
    } else {
        bad("unknown key \"" + key + "\"");
    }
}

}  // namespace

Config config_from_json(const std::string& json_text, Config base) {
    const auto parsed = nlohmann::json::parse(json_text, nullptr, false);
    if (!parsed.is_object()) bad("not a JSON object");
    for (const auto& [key, value] : parsed.items()) apply(base, key, value);
    if (base.deadline.count() <= 0) bad("\"deadline_s\" must be positive");
    if (base.line_timeout.count() <= 0) bad("\"line_timeout_s\" must be positive");
    if (base.write_timeout.count() <= 0) bad("\"write_timeout_s\" must be positive");
    if (base.blocking_threads == 0 || base.blocking_threads > 256)
        bad("\"blocking_threads\" must be 1-256");
    if (base.max_connections_per_uid == 0) bad("\"max_connections_per_uid\" must be positive");
    return base;
}

unsigned effective_max_workers(const Config& config) {
    if (config.max_workers != 0) return config.max_workers;
    const unsigned cores = std::thread::hardware_concurrency();
    return cores == 0 ? 1 : cores;
}

}  // namespace picklejail::daemon
