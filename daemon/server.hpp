// picklejaild's top level: accepts connections, owns the shared services,
// and handles SIGTERM/SIGINT (drain) and SIGHUP (reload policies).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <memory>

#include "daemon/listen_socket.hpp"
#include "daemon/services.hpp"
#include "daemon/session.hpp"

namespace picklejail::daemon {

class Server {
  public:
    Server(boost::asio::io_context& io, const Config& config, ListenSocket listen);
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    ~Server();

    // Starts accepting and tells systemd we are ready; the caller runs io.
    void start();

  private:
    void accept_next();
    void on_accepted(boost::asio::local::stream_protocol::socket socket);
    void refuse(boost::asio::local::stream_protocol::socket& socket, const std::string& why);
    void accept_after_pause();
    void watch_signals();
    void reload_policies();
    void begin_drain();
    void check_drained();
    void forget(Session* session);

    boost::asio::io_context& io_;
    ListenSocket listen_;
    Services services_;
    boost::asio::local::stream_protocol::acceptor acceptor_;
    boost::asio::signal_set signals_;
    boost::asio::steady_timer drain_poll_;
    boost::asio::steady_timer accept_pause_;
    std::map<Session*, std::shared_ptr<Session>> sessions_;
};

}  // namespace picklejail::daemon
