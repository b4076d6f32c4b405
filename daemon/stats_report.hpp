// The `stats` op's answer: counters, what is running and queued, and the
// limits in force.
#pragma once

#include <nlohmann/json.hpp>

#include "daemon/services.hpp"

namespace picklejail::daemon {

[[nodiscard]] nlohmann::json stats_report(const Services& services);

}  // namespace picklejail::daemon
