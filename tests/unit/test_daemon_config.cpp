// picklejaild's configuration file: every key, defaults, and refusals.
#include <catch2/catch.hpp>

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
    CHECK(c.loader_limits_json == R"({"max_objects":10})");
    CHECK(daemon::effective_max_workers(c) == 3);
}

TEST_CASE("defaults are the documented ones") {
    const daemon::Config c;
    CHECK(c.socket_path == "/run/picklejail/picklejail.sock");
    CHECK(c.max_queue == 64);
    CHECK(c.max_requests_per_uid == 8);
    CHECK(c.max_shm_bytes_per_uid == 8ULL << 30);
    CHECK(c.deadline == std::chrono::seconds(120));
    CHECK(c.shm_ttl == std::chrono::seconds(60));
    CHECK(daemon::effective_max_workers(c) >= 1);
}

TEST_CASE("bad config is refused with invalid_request") {
    for (const char* text :
         {"[]", "{", R"({"unknown_key": 1})", R"({"max_workers": -1})", R"({"max_workers": "2"})",
          R"({"socket_mode": "999"})", R"({"deadline_s": 0})", R"({"loader_limits": 3})",
          R"({"max_queue": 99999999999})"}) {
        INFO(text);
        try {
            (void)config_from_json(text);
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::invalid_request);
        }
    }
}
