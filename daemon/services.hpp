// What every session shares: the configuration and the server's parts.
// Owned by the Server; sessions hold a reference for their lifetime.
#pragma once

#include <boost/asio/io_context.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "daemon/audit_log.hpp"
#include "daemon/blocking_pool.hpp"
#include "daemon/config.hpp"
#include "daemon/image_cache.hpp"
#include "daemon/in_flight.hpp"
#include "daemon/memory_trim.hpp"
#include "daemon/policy_store.hpp"
#include "daemon/shm_registry.hpp"
#include "daemon/stats.hpp"
#include "daemon/uid_accounts.hpp"
#include "daemon/worker_pool.hpp"

namespace picklejail::daemon {

struct Services {
    Services(boost::asio::io_context& io, const Config& config);

    Config config;
    PolicyStore policies;
    // Off-loop work in two pools: opening callers' paths may hang on a dead
    // file system, so it never shares threads with the bounded work (reaping,
    // image checks, summaries, shm copies) that other users' requests need.
    BlockingPool caller_files;
    BlockingPool compute;
    WorkerPool pool;
    MemoryTrim memory_trim;
    ShmRegistry shm;
    UidAccounts accounts;
    Stats stats;
    AuditLog audit;
    std::unique_ptr<ImageCache> cache;  // null when caching is off
    InFlightConversions in_flight;      // used with the cache
    bool draining = false;
    ipc::UniqueFd network_namespace;          // the empty one workers join (as root)
    sandbox::WorkerIdentity worker_identity;  // resolved once at start
    nlohmann::json confinement;               // what this host gives workers, probed at start
};

}  // namespace picklejail::daemon
