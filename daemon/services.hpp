// What every session shares: the configuration and the server's parts.
// Owned by the Server; sessions hold a reference for their lifetime.
#pragma once

#include "daemon/audit_log.hpp"
#include "daemon/config.hpp"
#include "daemon/policy_store.hpp"
#include "daemon/shm_registry.hpp"
#include "daemon/stats.hpp"
#include "daemon/worker_pool.hpp"

namespace picklejail::daemon {

class ImageCache;

struct Services {
    Config config;
    PolicyStore policies;
    WorkerPool pool;
    ShmRegistry shm;
    Stats stats;
    AuditLog audit;
    ImageCache* cache = nullptr;  // null when caching is off
    bool draining = false;
};

}  // namespace picklejail::daemon
