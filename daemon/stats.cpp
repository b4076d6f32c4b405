#include "daemon/stats.hpp"

namespace picklejail::daemon {

nlohmann::json Stats::to_json() const {
    const auto uptime =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started)
            .count();
    return {{"uptime_s", uptime},
            {"connections", connections_open},
            {"connections_total", connections_total},
            {"connections_refused", connections_refused},
            {"accept_pauses", accept_pauses},
            {"requests", requests},
            {"by_op", by_op},
            {"by_code", by_code},
            {"bytes_out", bytes_out},
            {"workers_started", workers_started}};
}

}  // namespace picklejail::daemon
