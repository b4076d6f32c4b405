"""Fault and load tests for picklejaild: workers killed or starved mid-job,
deadlines, and 1,000 mixed hostile and good requests from 16 clients, after
which the daemon holds no more fds, memory, workers or shared memory than
before and every good request got the right bytes."""

import hashlib
import json
import os
import random
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from daemon_support import Client, Daemon, daemon_binary
from test_daemon import FIXTURES, SLOW_CONFIG, os_system_pickle, shm_objects, slow_pickle

pytestmark = pytest.mark.skipif(not daemon_binary().is_file(), reason="picklejaild not built")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def worker_pids(daemon):
    return [int(p) for p in daemon.children()]


@pytest.fixture
def slow(tmp_path):
    path = tmp_path / "slow.pkl"
    path.write_bytes(slow_pickle(3_000_000))
    config = tmp_path / "slow.json"
    config.write_text(json.dumps(SLOW_CONFIG))
    return path, config


def wait_for_worker(daemon, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(daemon)
        if pids:
            return pids[0]
        time.sleep(0.005)
    raise AssertionError("no worker started")


def test_worker_killed_mid_job(tmp_path, slow):
    path, config = slow
    d = Daemon(tmp_path, "--config", config)
    try:
        with Client(d.socket_path) as c:
            c.send({"op": "load", "path": str(path)})
            os.kill(wait_for_worker(d), signal.SIGKILL)
            reply = c.read_line()
            assert reply["ok"] is False
            assert reply["error"]["code"] in ("resource_exceeded", "worker_crashed"), reply
            assert c.load(path=FIXTURES / "torch-2.11" / "params.pt")[0]["ok"]
        d.wait_idle()
    finally:
        d.stop()


def test_worker_over_its_memory_cap(tmp_path, slow):
    path, config = slow
    d = Daemon(tmp_path, "--config", config, "--worker-memory", 96 << 20)
    try:
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(path)}, check=False)
            assert reply["error"]["code"] == "resource_exceeded", reply
            assert c.load(path=FIXTURES / "torch-2.11" / "params.pt")[0]["ok"]
    finally:
        d.stop()


def billion_laughs():
    """A list referencing itself through the memo, doubled 40 times (never unpickled)."""
    out = b"\x80\x02]q\x000"  # an empty list into memo 0, popped
    for i in range(40):
        out += b"(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1]) + b"0"
    return out[:-1] + b"."  # the last list stays as the result


def test_thousand_mixed_requests_from_sixteen_clients(tmp_path):
    good = {p: None for p in [FIXTURES / "torch-2.11" / "cnn_state_dict.pt",
                              FIXTURES / "torch-1.13" / "views.pt",
                              FIXTURES / "torch-2.11" / "legacy_format.pt"]}
    (tmp_path / "ref").mkdir()
    d0 = Daemon(tmp_path / "ref")
    try:
        with Client(d0.socket_path) as c:
            for p in good:
                good[p] = hashlib.sha256(c.load(path=p)[1]).hexdigest()
    finally:
        d0.stop()
    hostile = {}
    (tmp_path / "evil.pkl").write_bytes(os_system_pickle())
    hostile[tmp_path / "evil.pkl"] = "forbidden_global"
    (tmp_path / "laughs.pkl").write_bytes(billion_laughs())
    hostile[tmp_path / "laughs.pkl"] = "too_large"
    truncated = (FIXTURES / "torch-2.11" / "cnn_state_dict.pt").read_bytes()[:6000]
    (tmp_path / "truncated.pt").write_bytes(truncated)
    hostile[tmp_path / "truncated.pt"] = "malformed"
    hostile[FIXTURES / "torch-2.11" / "torchscript.pt"] = "unsupported"

    (tmp_path / "d").mkdir()
    # A lower object cap keeps each billion-laughs refusal quick; it still ends in too_large.
    config = tmp_path / "d" / "limits.json"
    config.write_text(json.dumps({"loader_limits": {"max_objects": 200_000}}))
    d = Daemon(tmp_path / "d", "--config", config, "--max-requests-per-uid", 32, "--max-queue", 256)
    shm_before = shm_objects()
    try:
        d.wait_idle()
        fds_before, rss_before = d.open_fds(), rss_kib(d.proc.pid)
        failures, counts = [], {"good": 0, "hostile": 0}
        lock = threading.Lock()

        def client(n):
            rng = random.Random(n)
            try:
                with Client(d.socket_path) as c:
                    for _ in range(1000 // 16 + 1):
                        if rng.random() < 0.5:
                            path = rng.choice(list(good))
                            transport = rng.choice(["memfd", "shm", "inline"])
                            _, image = c.load(transport, path=path)
                            assert hashlib.sha256(image).hexdigest() == good[path], path
                            kind = "good"
                        else:
                            path = rng.choice(list(hostile))
                            reply = c.request({"op": "load", "path": str(path)}, check=False)
                            assert reply["error"]["code"] == hostile[path], (path, reply)
                            kind = "hostile"
                        with lock:
                            counts[kind] += 1
            except Exception as e:  # noqa: BLE001 - reported with the client number
                failures.append((n, repr(e)))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not failures, failures[:5]
        assert counts["good"] + counts["hostile"] >= 1000
        d.wait_idle()
        assert d.open_fds() == fds_before
        assert rss_kib(d.proc.pid) < rss_before + 16 * 1024, "the daemon's memory grew"
        assert not worker_pids(d)
        assert shm_objects() - shm_before == set()
        stats = d.stats()
        assert stats["by_code"].get("internal", 0) == 0
        assert stats["by_code"].get("worker_crashed", 0) == 0
    finally:
        d.stop()
