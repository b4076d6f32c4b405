// Counters the `stats` op reports. Plain numbers owned by the server.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"

namespace picklejail::daemon {

struct Stats {
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    std::uint64_t connections_total = 0;
    std::uint64_t connections_open = 0;
    std::uint64_t connections_refused = 0;
    std::uint64_t accept_pauses = 0;  // accepts put off because the fd table was full
    std::uint64_t requests = 0;
    std::map<std::string, std::uint64_t> by_op;
    std::map<std::string, std::uint64_t> by_code;
    std::uint64_t bytes_out = 0;
    std::uint64_t workers_started = 0;

    void count_request(std::string_view op) {
        ++requests;
        ++by_op[std::string(op)];
    }
    void count_result(ErrorCode code) { ++by_code[std::string(to_string(code))]; }
    // An ending that is not an error code ("cancelled": the reply never arrived).
    void count_outcome(std::string_view outcome) { ++by_code[std::string(outcome)]; }
    [[nodiscard]] nlohmann::json to_json() const;
};

}  // namespace picklejail::daemon
