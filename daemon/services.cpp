#include "daemon/services.hpp"

#include <thread>

#include "sandbox/host_confinement.hpp"
#include "sandbox/policy_files.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::daemon {
namespace {

std::filesystem::path policy_dir(const Config& config) {
    return config.policy_dir.empty() ? sandbox::default_policy_dir() : config.policy_dir;
}

BlockingPool::Limits caller_file_limits(const Config& config) {
    // One uid's hung opens may hold at most half the threads.
    return {config.blocking_threads, std::max<std::size_t>(1, config.blocking_threads / 2), 4096,
            config.max_requests_per_uid};
}

BlockingPool::Limits compute_limits(const Config& config) {
    const unsigned threads = std::max(2U, std::thread::hardware_concurrency());
    return {threads, threads, 4096, 4ULL * config.max_requests_per_uid};
}

}  // namespace

Services::Services(boost::asio::io_context& io, const Config& c)
    : config(c),
      policies(policy_dir(c)),
      caller_files(io, caller_file_limits(c)),
      compute(io, compute_limits(c)),
      pool(io, compute, {effective_max_workers(c), c.max_queue, c.max_requests_per_uid}),
      memory_trim(compute),
      shm(io, c.shm_ttl, c.max_shm_bytes_per_uid, c.shm_prefix),
      accounts({c.max_connections_per_uid, c.max_reply_bytes_per_uid}),
      audit(stderr),
      cache(c.cache_bytes > 0 ? std::make_unique<ImageCache>(c.cache_bytes) : nullptr),
      network_namespace(sandbox::create_empty_network_namespace()),
      worker_identity(sandbox::worker_identity()),
      confinement(sandbox::describe_host_confinement()) {
    if (cache) cache->start_generation(policies.generation());
}

}  // namespace picklejail::daemon
