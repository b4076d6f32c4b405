#include "daemon/stats_report.hpp"

namespace picklejail::daemon {

nlohmann::json stats_report(const Services& s) {
    const auto& c = s.config;
    auto stats = s.stats.to_json();
    stats["workers_running"] = s.pool.running();
    stats["queued"] = s.pool.queued();
    stats["workers_started"] = s.pool.started_total();
    stats["blocking"] = {{"caller_files_queued", s.caller_files.queued()},
                         {"caller_files_busy", s.caller_files.busy_threads()},
                         {"compute_queued", s.compute.queued()},
                         {"compute_busy", s.compute.busy_threads()}};
    stats["shm_objects"] = s.shm.count();
    stats["shm_bytes"] = s.shm.total_bytes();
    stats["draining"] = s.draining;
    stats["cache"] = s.cache ? s.cache->stats() : nlohmann::json{{"enabled", false}};
    if (s.cache) stats["cache"]["enabled"] = true;
    stats["in_flight_shared"] = s.in_flight.size();
    stats["policies"] = s.policies.names();
    stats["confinement"] = s.confinement;
    stats["limits"] = {{"max_workers", s.pool.limits().max_workers},
                       {"max_queue", s.pool.limits().max_queue},
                       {"max_requests_per_uid", s.pool.limits().max_per_uid},
                       {"max_connections", c.max_connections},
                       {"max_connections_per_uid", c.max_connections_per_uid},
                       {"max_reply_bytes_per_uid", c.max_reply_bytes_per_uid},
                       {"line_timeout_ms", c.line_timeout.count()},
                       {"write_timeout_ms", c.write_timeout.count()},
                       {"blocking_threads", c.blocking_threads},
                       {"max_shm_bytes_per_uid", c.max_shm_bytes_per_uid},
                       {"max_input_bytes", c.max_input_bytes},
                       {"max_output_bytes", c.max_output_bytes},
                       {"deadline_ms", c.deadline.count()},
                       {"shm_ttl_s", c.shm_ttl.count()}};
    return stats;
}

}  // namespace picklejail::daemon
