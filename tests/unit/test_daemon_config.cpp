// picklejaild's configuration file: every key, defaults, and refusals.
#include <catch2/catch.hpp>
#include <fstream>
#include <iterator>

#include "common/error.hpp"
#include "daemon/config.hpp"

using namespace picklejail;
using daemon::config_from_json;

TEST_CASE("config keys override the defaults") {
    const auto c = config_from_json(R"({
        "socket": "/tmp/x.sock", "socket_mode": "0660", "policy_dir": "/p", "worker": "/w",
        "default_policy": "checkpoint", "max_workers": 3, "max_queue": 5,
        "max_requests_per_uid": 2, "max_connections": 9, "max_shm_bytes_per_uid": 100,
        "max_input_bytes": 200, "max_output_bytes": 300, "deadline_s": 7,
        "worker_memory_bytes": 400, "shm_ttl_s": 11, "cache_bytes": 500,
        "max_connections_per_uid": 12, "max_reply_bytes_per_uid": 13, "line_timeout_s": 1.5,
        "write_timeout_s": 14, "blocking_threads": 6, "shm_prefix": "pj_test",
        "loader_limits": {"max_objects": 10}})");
    CHECK(c.socket_path == "/tmp/x.sock");
    CHECK(c.socket_mode == 0660);
    CHECK(c.default_policy == "checkpoint");
    CHECK(c.max_workers == 3);
    CHECK(c.max_queue == 5);
    CHECK(c.max_requests_per_uid == 2);
    CHECK(c.max_connections == 9);
    CHECK(c.max_shm_bytes_per_uid == 100);
    CHECK(c.max_input_bytes == 200);
    CHECK(c.max_output_bytes == 300);
    CHECK(c.deadline == std::chrono::seconds(7));
    CHECK(c.worker_memory_bytes == 400);
    CHECK(c.shm_ttl == std::chrono::seconds(11));
    CHECK(c.cache_bytes == 500);
    CHECK(c.max_connections_per_uid == 12);
    CHECK(c.max_reply_bytes_per_uid == 13);
    CHECK(c.line_timeout == std::chrono::milliseconds(1500));
    CHECK(c.write_timeout == std::chrono::seconds(14));
    CHECK(c.blocking_threads == 6);
    CHECK(c.shm_prefix == "pj_test");
    CHECK(c.loader_limits_json == R"({"max_objects":10})");
    CHECK(daemon::effective_max_workers(c) == 3);
}

// The shipped config file (daemon/picklejaild.json, installed as
// /etc/picklejail/picklejaild.json) spells out every default: reading it over
// a config whose every field differs must give back exactly the defaults.
TEST_CASE("the shipped config file states exactly the built-in defaults") {
    std::ifstream in(std::string(PICKLEJAIL_SOURCE_DIR) + "/daemon/picklejaild.json");
    REQUIRE(in);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    daemon::Config scrambled;
    scrambled.max_queue = 1;
    scrambled.max_requests_per_uid = 1;
    scrambled.max_connections = 1;
    scrambled.max_connections_per_uid = 1;
    scrambled.max_reply_bytes_per_uid = 1;
    scrambled.line_timeout = std::chrono::milliseconds(1);
    scrambled.write_timeout = std::chrono::milliseconds(1);
    scrambled.blocking_threads = 1;
    scrambled.max_shm_bytes_per_uid = 1;
    scrambled.max_input_bytes = 1;
    scrambled.max_output_bytes = 1;
    scrambled.deadline = std::chrono::milliseconds(1);
    scrambled.worker_memory_bytes = 1;
    scrambled.shm_ttl = std::chrono::seconds(1);
    scrambled.shm_prefix = "x";
    scrambled.cache_bytes = 1;
    scrambled.max_workers = 1;
    scrambled.default_policy = "x";
    scrambled.socket_path = "/x";
    const auto shipped = config_from_json(text, scrambled);
    const daemon::Config defaults;
    CHECK(shipped.socket_path == defaults.socket_path);
    CHECK(shipped.default_policy == defaults.default_policy);
    CHECK(shipped.max_workers == defaults.max_workers);
    CHECK(shipped.max_queue == defaults.max_queue);
    CHECK(shipped.max_requests_per_uid == defaults.max_requests_per_uid);
    CHECK(shipped.max_connections == defaults.max_connections);
    CHECK(shipped.max_connections_per_uid == defaults.max_connections_per_uid);
    CHECK(shipped.max_reply_bytes_per_uid == defaults.max_reply_bytes_per_uid);
    CHECK(shipped.line_timeout == defaults.line_timeout);
    CHECK(shipped.write_timeout == defaults.write_timeout);
    CHECK(shipped.blocking_threads == defaults.blocking_threads);
    CHECK(shipped.max_shm_bytes_per_uid == defaults.max_shm_bytes_per_uid);
    CHECK(shipped.max_input_bytes == defaults.max_input_bytes);
    CHECK(shipped.max_output_bytes == defaults.max_output_bytes);
    CHECK(shipped.deadline == defaults.deadline);
    CHECK(shipped.worker_memory_bytes == defaults.worker_memory_bytes);
    CHECK(shipped.shm_ttl == defaults.shm_ttl);
    CHECK(shipped.shm_prefix == defaults.shm_prefix);
    CHECK(shipped.cache_bytes == defaults.cache_bytes);
    CHECK(daemon::effective_max_workers(defaults) >= 1);
}

TEST_CASE("bad config is refused with invalid_request") {
    for (const char* text :
         {"[]", "{", R"({"unknown_key": 1})", R"({"max_workers": -1})", R"({"max_workers": "2"})",
          R"({"socket_mode": "999"})", R"({"deadline_s": 0})", R"({"loader_limits": 3})",
          R"({"max_queue": 99999999999})", R"({"loader_limits": {"max_objectz": 1}})",
          R"({"loader_limits": {"max_objects": "many"}})", R"({"line_timeout_s": 0})",
          R"({"shm_prefix": "a/b"})", R"({"shm_prefix": ""})", R"({"blocking_threads": 0})",
          R"({"max_connections_per_uid": 0})"}) {
        INFO(text);
        try {
            (void)config_from_json(text);
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::invalid_request);
        }
    }
}
