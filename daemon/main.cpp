// picklejaild: the broker that loads untrusted checkpoints for local users,
// each in a fresh sandboxed worker, and hands back sealed safetensors images.
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.hpp"
#include "daemon/config.hpp"
#include "daemon/listen_socket.hpp"
#include "daemon/server.hpp"

namespace {

using picklejail::daemon::Config;

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw picklejail::Error(picklejail::ErrorCode::io_error, "cannot read " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

// Flags override the config file; each flag names a config key.
struct Flags {
    std::string config_file;
    std::string socket, policy_dir, worker, default_policy, socket_mode, shm_prefix;
    unsigned max_workers = 0, max_queue = 0, max_requests_per_uid = 0, max_connections = 0;
    unsigned max_connections_per_uid = 0, blocking_threads = 0;
    std::uint64_t max_reply_bytes_per_uid = 0;
    double line_timeout_s = 0, write_timeout_s = 0;
    std::uint64_t max_shm_bytes_per_uid = 0, max_input_bytes = 0, max_output_bytes = 0;
    double deadline_s = 0;
    std::uint64_t worker_memory_bytes = 0, shm_ttl_s = 0, cache_bytes = 0;
};

void add_flags(CLI::App& app, Flags& f) {
    app.add_option("--config", f.config_file, "JSON config file (keys as in docs/protocol.md)");
    app.add_option("--socket", f.socket, "listen on this Unix socket path");
    app.add_option("--socket-mode", f.socket_mode, "octal mode of the socket file (0666)");
    app.add_option("--policy-dir", f.policy_dir, "directory of policy .json files");
    app.add_option("--worker", f.worker, "path of picklejail-worker");
    app.add_option("--default-policy", f.default_policy, "policy for requests naming none");
    app.add_option("--max-workers", f.max_workers, "concurrent workers (default: cores)");
    app.add_option("--max-queue", f.max_queue, "requests waiting for a worker, all uids (1024)");
    app.add_option("--max-requests-per-uid", f.max_requests_per_uid,
                   "requests waiting or running per uid (64)");
    app.add_option("--max-connections", f.max_connections, "open connections (1024)");
    app.add_option("--max-connections-per-uid", f.max_connections_per_uid,
                   "open connections per uid (64)");
    app.add_option("--max-reply-bytes-per-uid", f.max_reply_bytes_per_uid,
                   "reply bytes queued for a uid and not yet read (256 MiB)");
    app.add_option("--line-timeout", f.line_timeout_s,
                   "seconds to finish a request line once begun (10)");
    app.add_option("--write-timeout", f.write_timeout_s,
                   "seconds a reply may make no progress before the connection closes (30)");
    app.add_option("--blocking-threads", f.blocking_threads,
                   "threads for opens, reaping, checks and shm copies (4)");
    app.add_option("--shm-prefix", f.shm_prefix,
                   "prefix of shm object names; leftovers with it are removed at start "
                   "(picklejail)");
    app.add_option("--max-shm-bytes-per-uid", f.max_shm_bytes_per_uid,
                   "unreleased shm bytes per uid (8 GiB)");
    app.add_option("--max-input-bytes", f.max_input_bytes, "largest checkpoint (64 GiB)");
    app.add_option("--max-output-bytes", f.max_output_bytes, "largest image (64 GiB)");
    app.add_option("--deadline", f.deadline_s, "seconds per request before the worker dies (120)");
    app.add_option("--worker-memory", f.worker_memory_bytes,
                   "worker address-space cap in bytes (0: 2 x input + 1 GiB)");
    app.add_option("--shm-ttl", f.shm_ttl_s, "seconds before unreleased shm is removed (60)");
    app.add_option("--cache-bytes", f.cache_bytes, "shared image cache size (0: off)");
}

Config build_config(const CLI::App& app, const Flags& f) {
    Config c;
    if (!f.config_file.empty()) c = picklejail::daemon::config_from_json(read_file(f.config_file));
    const auto given = [&app](const char* name) { return app.get_option(name)->count() > 0; };
    nlohmann::json overrides = nlohmann::json::object();
    if (given("--socket")) overrides["socket"] = f.socket;
    if (given("--socket-mode")) overrides["socket_mode"] = f.socket_mode;
    if (given("--policy-dir")) overrides["policy_dir"] = f.policy_dir;
    if (given("--worker")) overrides["worker"] = f.worker;
    if (given("--default-policy")) overrides["default_policy"] = f.default_policy;
    if (given("--max-workers")) overrides["max_workers"] = f.max_workers;
    if (given("--max-queue")) overrides["max_queue"] = f.max_queue;
    if (given("--max-requests-per-uid")) overrides["max_requests_per_uid"] = f.max_requests_per_uid;
    if (given("--max-connections")) overrides["max_connections"] = f.max_connections;
    if (given("--max-connections-per-uid"))
        overrides["max_connections_per_uid"] = f.max_connections_per_uid;
    if (given("--max-reply-bytes-per-uid"))
        overrides["max_reply_bytes_per_uid"] = f.max_reply_bytes_per_uid;
    if (given("--line-timeout")) overrides["line_timeout_s"] = f.line_timeout_s;
    if (given("--write-timeout")) overrides["write_timeout_s"] = f.write_timeout_s;
    if (given("--blocking-threads")) overrides["blocking_threads"] = f.blocking_threads;
    if (given("--shm-prefix")) overrides["shm_prefix"] = f.shm_prefix;
    if (given("--max-shm-bytes-per-uid"))
        overrides["max_shm_bytes_per_uid"] = f.max_shm_bytes_per_uid;
    if (given("--max-input-bytes")) overrides["max_input_bytes"] = f.max_input_bytes;
    if (given("--max-output-bytes")) overrides["max_output_bytes"] = f.max_output_bytes;
    if (given("--deadline"))
        overrides["deadline_ms"] = static_cast<std::uint64_t>(f.deadline_s * 1000.0);
    if (given("--worker-memory")) overrides["worker_memory_bytes"] = f.worker_memory_bytes;
    if (given("--shm-ttl")) overrides["shm_ttl_s"] = f.shm_ttl_s;
    if (given("--cache-bytes")) overrides["cache_bytes"] = f.cache_bytes;
    return picklejail::daemon::config_from_json(overrides.dump(), c);
}

int run(int argc, char** argv) {
    CLI::App app{"picklejaild: sandboxed loading of untrusted PyTorch checkpoints for local users"};
    Flags flags;
    add_flags(app, flags);
    CLI11_PARSE(app, argc, argv);
    // A client that hangs up mid-reply must not kill the daemon.
    (void)std::signal(SIGPIPE, SIG_IGN);
    try {
        const Config config = build_config(app, flags);
        boost::asio::io_context io(1);
        auto listen =
            picklejail::daemon::open_listen_socket(config.socket_path, config.socket_mode);
        picklejail::daemon::Server server(io, config, std::move(listen));
        server.start();
        // A bug that throws out of one handler must not take the service down
        // for every user: report it and keep serving.
        for (;;) {
            try {
                io.run();
                break;
            } catch (const std::exception& e) {
                (void)std::fprintf(
                    stderr, "{\"event\":\"internal_error\",\"message\":%s}\n",
                    nlohmann::json(e.what())
                        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                        .c_str());
            }
        }
    } catch (const picklejail::Error& e) {
        (void)std::fprintf(stderr, "picklejaild: %s: %s\n",
                           std::string(to_string(e.code())).c_str(), e.what());
        return 1;
    } catch (const std::exception& e) {
        (void)std::fprintf(stderr, "picklejaild: internal: %s\n", e.what());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {  // run() reports expected errors itself
        (void)std::fprintf(stderr, "picklejaild: internal: %s\n", e.what());
        return 1;
    }
}
