"""The limits issue 14 adds, as flags, and the changed defaults."""

from mu_support import NEW_FLAGS, MiB, MUDaemon, supported_flags


def test_new_limits_are_flags_and_defaults_queue_generously(world):
    """--max-connections-per-uid, --line-timeout, --write-timeout,
    --max-reply-bytes-per-uid, --shm-prefix and --blocking-threads exist and a
    daemon starts with all of them; max_queue defaults to 1024 and
    max_requests_per_uid to 64."""
    d0 = MUDaemon(world, name="defaults")
    try:
        missing = [f for f in NEW_FLAGS if f not in supported_flags(d0.binary)]
        assert not missing, f"picklejaild --help lacks {missing}"
        limits = d0.stats()["limits"]
        assert limits["max_queue"] == 1024, limits
        assert limits["max_requests_per_uid"] == 64, limits
    finally:
        d0.stop()
    d = MUDaemon(world, "--max-connections-per-uid", 10, "--line-timeout", 3,
                 "--write-timeout", 7, "--max-reply-bytes-per-uid", 64 * MiB,
                 "--blocking-threads", 2, name="flags")
    try:
        assert not d.dropped
        assert d.request({"op": "ping"}).get("ok")
    finally:
        d.stop()
