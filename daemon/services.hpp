// What every session shares: the configuration and the server's parts.
// Owned by the Server; sessions hold a reference for their lifetime.
#pragma once

#include <memory>

#include "daemon/audit_log.hpp"
#include "daemon/config.hpp"
#include "daemon/image_cache.hpp"
#include "daemon/in_flight.hpp"
#include "daemon/policy_store.hpp"
#include "daemon/shm_registry.hpp"
#include "daemon/stats.hpp"
#include "daemon/worker_pool.hpp"

namespace picklejail::daemon {

struct Services {
    Config config;
    PolicyStore policies;
    WorkerPool pool;
    ShmRegistry shm;
    Stats stats;
    AuditLog audit;
    std::unique_ptr<ImageCache> cache;  // null when caching is off
    InFlightConversions in_flight;      // used with the cache
    bool draining = false;
    ipc::UniqueFd network_namespace;          // the empty one workers join (as root)
    sandbox::WorkerIdentity worker_identity;  // resolved once at start
};

}  // namespace picklejail::daemon
