#include "daemon/audit_log.hpp"

#include <chrono>
#include <ctime>
#include <string>

namespace picklejail::daemon {
namespace {

std::string utc_now() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    std::tm utc{};
    ::gmtime_r(&seconds, &utc);
    char text[40];
    const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
    (void)std::snprintf(text + n, sizeof text - n, ".%03dZ", static_cast<int>(millis));
    return text;
}

}  // namespace

void AuditLog::record(const nlohmann::json& entry) const {
    nlohmann::json line{{"time", utc_now()}};
    line.update(entry);
    const std::string text =
        line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    // One fwrite per line so concurrent writers to the journal never interleave.
    (void)std::fwrite(text.data(), 1, text.size(), sink_);
    (void)std::fflush(sink_);
}

void AuditLog::event(const char* name, nlohmann::json details) const {
    details["event"] = name;
    record(details);
}

}  // namespace picklejail::daemon
