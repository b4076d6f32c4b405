// One JSON line per request on stderr, which journald keeps: who asked,
// for which file, under which policy, and how it ended.
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>

namespace picklejail::daemon {

class AuditLog {
  public:
    explicit AuditLog(std::FILE* sink) : sink_(sink) {}
    // Adds "time" (UTC, RFC 3339 with milliseconds) and writes one line.
    void record(const nlohmann::json& entry) const;
    // Daemon lifecycle events ("start", "reload", "drain", "stop").
    void event(const char* name, nlohmann::json details = nlohmann::json::object()) const;

  private:
    std::FILE* sink_;
};

}  // namespace picklejail::daemon
