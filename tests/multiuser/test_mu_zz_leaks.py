"""Runs last (file order): the long-lived daemon the other tests attacked is back
near where it started (issue 14: "after the suite, the daemon's fd count and
RSS are back near their start")."""

import time

from mu_support import MiB


def test_shared_daemon_fds_and_rss_back_near_start(shared_daemon):
    d = shared_daemon
    assert d.alive(), f"the shared daemon died: exit {d.proc.returncode}"
    d.wait_idle(30)
    time.sleep(0.5)
    fds = d.settled_fd_count()
    rss = d.rss()
    stats = d.stats()
    # Each cached image is one sealed memfd the cache holds on purpose; any
    # other descriptor left behind is a leak.
    cached_now = stats["cache"]["entries"]
    allowed = d.start_fds + max(0, cached_now - d.start_cache_entries) + 2
    assert fds <= allowed, (f"fds: {d.start_fds} at start with {d.start_cache_entries} cached "
                            f"images, {fds} now with {cached_now}")
    assert rss <= d.start_rss + 96 * MiB, \
        f"RSS: {d.start_rss / MiB:.0f} MiB at start, {rss / MiB:.0f} MiB now"
    assert stats["shm_objects"] == 0, stats
    assert not d.children()
