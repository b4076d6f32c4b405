#include "daemon/server.hpp"

#include <boost/asio/post.hpp>
#include <csignal>

#include "ipc/protocol.hpp"
#include "sandbox/policy_files.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::daemon {
namespace {

std::filesystem::path policy_dir(const Config& config) {
    return config.policy_dir.empty() ? sandbox::default_policy_dir() : config.policy_dir;
}

PoolLimits pool_limits(const Config& config) {
    return {effective_max_workers(config), config.max_queue, config.max_requests_per_uid};
}

}  // namespace

Server::Server(boost::asio::io_context& io, const Config& config, ListenSocket listen)
    : io_(io),
      listen_(std::move(listen)),
      services_{config,
                PolicyStore(policy_dir(config)),
                WorkerPool(io, pool_limits(config)),
                ShmRegistry(io, config.shm_ttl, config.max_shm_bytes_per_uid),
                Stats{},
                AuditLog(stderr),
                config.cache_bytes > 0 ? std::make_unique<ImageCache>(config.cache_bytes) : nullptr,
                InFlightConversions{},
                false,
                sandbox::create_empty_network_namespace(),
                sandbox::worker_identity()},
      acceptor_(io, boost::asio::local::stream_protocol(), listen_.fd.release()),
      signals_(io, SIGTERM, SIGINT, SIGHUP),
      drain_poll_(io) {}

Server::~Server() {
    services_.shm.clear();
    if (!listen_.bound_path.empty()) {
        std::error_code ignored;
        std::filesystem::remove(listen_.bound_path, ignored);
    }
}

void Server::start() {
    acceptor_.non_blocking(true);
    watch_signals();
    accept_next();
    const auto& c = services_.config;
    services_.audit.event(
        "start",
        {{"socket", listen_.from_systemd ? "systemd" : listen_.bound_path.string()},
         {"policy_dir", services_.policies.dir().string()},
         {"policies", services_.policies.names()},
         {"worker", (c.worker.empty() ? sandbox::default_worker_path() : c.worker).string()},
         {"max_workers", services_.pool.limits().max_workers}});
    notify_systemd("READY=1\nSTATUS=accepting requests");
}

void Server::accept_next() {
    acceptor_.async_accept([this](const boost::system::error_code& ec,
                                  boost::asio::local::stream_protocol::socket socket) {
        if (ec == boost::asio::error::operation_aborted || services_.draining) return;
        if (!ec) {
            ++services_.stats.connections_total;
            if (sessions_.size() >= services_.config.max_connections) {
                // Say why before hanging up, so a client sees busy, not a reset.
                ++services_.stats.connections_refused;
                const auto line = ipc::to_line(
                    ipc::error_reply(ErrorCode::busy, "too many open connections; retry later"));
                boost::system::error_code ignored;
                socket.non_blocking(true, ignored);
                (void)socket.write_some(boost::asio::buffer(line), ignored);
            } else {
                auto session = std::make_shared<Session>(services_, std::move(socket),
                                                         [this](Session* s) { forget(s); });
                sessions_.emplace(session.get(), session);
                services_.stats.connections_open = sessions_.size();
                try {
                    session->start();
                } catch (const Error&) {
                    forget(session.get());
                }
            }
        }
        accept_next();
    });
}

void Server::forget(Session* session) {
    // Deferred: the session may be inside one of its own handlers.
    boost::asio::post(io_, [this, session] {
        sessions_.erase(session);
        services_.stats.connections_open = sessions_.size();
    });
}

void Server::watch_signals() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
        if (ec) return;
        if (signal == SIGHUP) {
            reload_policies();
        } else if (!services_.draining) {
            begin_drain();
        } else {
            // A second SIGTERM/SIGINT: stop waiting for work in flight.
            services_.audit.event("abort", {{"sessions", sessions_.size()}});
            auto open = sessions_;
            for (auto& [ptr, session] : open) session->abort();
            services_.pool.refuse_queued(ErrorCode::busy, "the daemon is stopping");
        }
        watch_signals();
    });
}

void Server::reload_policies() {
    notify_systemd("RELOADING=1");
    try {
        services_.policies.reload();
        if (services_.cache) services_.cache->clear();  // keys carry the old generation anyway
        services_.audit.event("reload", {{"policies", services_.policies.names()}});
    } catch (const Error& e) {
        services_.audit.event("reload_failed", {{"message", e.what()}});
    }
    notify_systemd("READY=1");
}

void Server::begin_drain() {
    services_.draining = true;
    notify_systemd("STOPPING=1\nSTATUS=draining");
    services_.audit.event("drain", {{"sessions", sessions_.size()},
                                    {"workers_running", services_.pool.running()},
                                    {"queued", services_.pool.queued()}});
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    services_.pool.refuse_queued(ErrorCode::busy, "the daemon is shutting down; retry shortly");
    auto open = sessions_;  // close_when_idle may forget sessions
    for (auto& [ptr, session] : open) session->close_when_idle();
    check_drained();
}

// In-flight jobs end by themselves or at their deadline; poll until then.
void Server::check_drained() {
    if (sessions_.empty() && services_.pool.idle()) {
        services_.shm.clear();
        if (services_.cache) services_.cache->clear();
        services_.audit.event("stop", {{"requests", services_.stats.requests}});
        signals_.cancel();
        io_.stop();
        return;
    }
    drain_poll_.expires_after(std::chrono::milliseconds(50));
    drain_poll_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) check_drained();
    });
}

}  // namespace picklejail::daemon
