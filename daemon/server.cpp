#include "daemon/server.hpp"

#include <sys/resource.h>

#include <boost/asio/post.hpp>
#include <csignal>

#include "ipc/protocol.hpp"
#include "sandbox/policy_files.hpp"
#include "sandbox/spawner.hpp"

namespace picklejail::daemon {
namespace {

// Accepting again after the fd table filled up: soon enough to serve, slow
// enough not to spin on EMFILE.
constexpr std::chrono::milliseconds kAcceptPause{100};

// As many descriptors as the hard limit allows: each connection, worker and
// cached image holds some, and running out is what floods aim at.
void raise_fd_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        (void)::setrlimit(RLIMIT_NOFILE, &limit);
    }
}

}  // namespace

Server::Server(boost::asio::io_context& io, const Config& config, ListenSocket listen)
    : io_(io),
      listen_(std::move(listen)),
      services_(io, config),
      acceptor_(io, boost::asio::local::stream_protocol(), listen_.fd.release()),
      signals_(io, SIGTERM, SIGINT, SIGHUP),
      drain_poll_(io),
      accept_pause_(io) {
    raise_fd_limit();
}

Server::~Server() {
    services_.shm.clear();
    if (!listen_.bound_path.empty()) {
        std::error_code ignored;
        std::filesystem::remove(listen_.bound_path, ignored);
    }
}

void Server::start() {
    acceptor_.non_blocking(true);
    const std::size_t swept = services_.shm.sweep_leftovers();
    watch_signals();
    accept_next();
    const auto& c = services_.config;
    services_.audit.event(
        "start",
        {{"socket", listen_.from_systemd ? "systemd" : listen_.bound_path.string()},
         {"policy_dir", services_.policies.dir().string()},
         {"policies", services_.policies.names()},
         {"worker", (c.worker.empty() ? sandbox::default_worker_path() : c.worker).string()},
         {"max_workers", services_.pool.limits().max_workers},
         {"shm_leftovers_removed", swept},
         {"confinement", services_.confinement}});
    notify_systemd("READY=1\nSTATUS=accepting requests");
}

void Server::accept_next() {
    acceptor_.async_accept([this](const boost::system::error_code& ec,
                                  boost::asio::local::stream_protocol::socket socket) {
        if (ec == boost::asio::error::operation_aborted || services_.draining) return;
        if (ec == boost::asio::error::no_descriptors || ec.value() == ENFILE ||
            ec.value() == ENOBUFS || ec.value() == ENOMEM) {
            ++services_.stats.accept_pauses;
            return accept_after_pause();
        }
        if (!ec) on_accepted(std::move(socket));
        accept_next();
    });
}

void Server::accept_after_pause() {
    accept_pause_.expires_after(kAcceptPause);
    accept_pause_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec && !services_.draining) accept_next();
    });
}

void Server::on_accepted(boost::asio::local::stream_protocol::socket socket) {
    ++services_.stats.connections_total;
    if (sessions_.size() >= services_.config.max_connections)
        return refuse(socket, "too many open connections; retry later");
    ipc::PeerCredentials peer;
    try {
        peer = ipc::peer_credentials(socket.native_handle());
    } catch (const Error&) {
        return;  // gone already
    }
    auto slot = services_.accounts.open_connection(peer.uid);
    if (!slot) {
        return refuse(socket, "uid " + std::to_string(peer.uid) + " already has " +
                                  std::to_string(services_.config.max_connections_per_uid) +
                                  " connections open (the limit); close some");
    }
    auto session = std::make_shared<Session>(services_, std::move(socket), std::move(peer),
                                             std::move(*slot), [this](Session* s) { forget(s); });
    sessions_.emplace(session.get(), session);
    services_.stats.connections_open = sessions_.size();
    try {
        session->start();
    } catch (const Error&) {
        session->abort();
    }
}

// Say why before hanging up, so a client sees busy, not a reset.
void Server::refuse(boost::asio::local::stream_protocol::socket& socket, const std::string& why) {
    ++services_.stats.connections_refused;
    const auto line = ipc::to_line(ipc::error_reply(ErrorCode::busy, why));
    boost::system::error_code ignored;
    socket.non_blocking(true, ignored);
    (void)socket.write_some(boost::asio::buffer(line), ignored);
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
        if (services_.cache) services_.cache->start_generation(services_.policies.generation());
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
