"""The daemon's shared image cache: hits, invalidation, eviction, access
control, and one conversion shared by concurrent requests."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon_support import Client, Daemon, ProtocolError, daemon_binary
from test_daemon import FIXTURES, NOBODY, SLOW_CONFIG, slow_pickle

pytestmark = pytest.mark.skipif(not daemon_binary().is_file(), reason="picklejaild not built")

CNN = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"  # a 14,448-byte image
PARAMS = FIXTURES / "torch-2.11" / "params.pt"
LEGACY = FIXTURES / "torch-2.11" / "legacy_format.pt"  # a 15,216-byte image


@pytest.fixture
def cached_daemon(tmp_path):
    d = Daemon(tmp_path, "--cache-bytes", 1 << 30)
    yield d
    d.stop()


def test_second_load_is_a_hit_sharing_one_copy(cached_daemon):
    with Client(cached_daemon.socket_path) as c:
        first = c.request({"op": "load", "path": str(CNN)})
        fd1 = c.fds.pop()
        second = c.request({"op": "load", "path": str(CNN)})
        fd2 = c.fds.pop()
    try:
        assert first["cached"] is False and second["cached"] is True
        # The same sealed memfd: the host holds one copy of the weights.
        assert os.fstat(fd1).st_ino == os.fstat(fd2).st_ino
        assert os.pread(fd1, first["size"], 0) == os.pread(fd2, second["size"], 0)
    finally:
        os.close(fd1)
        os.close(fd2)
    stats = cached_daemon.stats()
    assert stats["cache"]["hits"] == 1 and stats["cache"]["misses"] == 1
    assert stats["workers_started"] == 1


@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_hits_serve_every_transport(cached_daemon, transport):
    with Client(cached_daemon.socket_path) as c:
        _, a = c.load("memfd", path=CNN)
        reply, b = c.load(transport, path=CNN)
    assert reply["cached"] and a == b


def test_policy_and_selection_are_part_of_the_key(cached_daemon):
    with Client(cached_daemon.socket_path) as c:
        assert not c.load(path=PARAMS, policy="weights")[0]["cached"]
        assert not c.load(path=PARAMS, policy="checkpoint")[0]["cached"]
        assert not c.load(path=PARAMS, select=["a"])[0]["cached"]
        assert c.load(path=PARAMS, policy="checkpoint")[0]["cached"]


def test_changed_file_misses(cached_daemon, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(CNN, path)
    with Client(cached_daemon.socket_path) as c:
        _, before = c.load(path=path)
        assert c.load(path=path)[0]["cached"]
        shutil.copy(PARAMS, path)  # same inode, new content, size and mtime
        reply, after = c.load(path=path)
    assert reply["cached"] is False and after != before
    assert cached_daemon.stats()["cache"]["invalidations"] == 1


def test_touched_file_misses(cached_daemon, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(CNN, path)
    with Client(cached_daemon.socket_path) as c:
        c.load(path=path)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert c.load(path=path)[0]["cached"] is False


def test_least_recently_used_is_evicted(tmp_path):
    d = Daemon(tmp_path, "--cache-bytes", 20_000)
    try:
        with Client(d.socket_path) as c:
            c.load(path=CNN)
            c.load(path=LEGACY)  # 15 kB: CNN's 14 kB image no longer fits beside it
            assert d.stats()["cache"]["evictions"] == 1
            assert c.load(path=LEGACY)[0]["cached"]
            assert c.load(path=CNN)[0]["cached"] is False
        assert d.stats()["cache"]["bytes"] <= 20_000
    finally:
        d.stop()


def test_cache_is_off_by_default(tmp_path):
    d = Daemon(tmp_path)
    try:
        with Client(d.socket_path) as c:
            c.load(path=CNN)
            assert c.load(path=CNN)[0]["cached"] is False
        assert d.stats()["cache"]["enabled"] is False
    finally:
        d.stop()


def test_a_uid_that_cannot_read_the_file_gets_no_hit(tmp_path):
    public = Path("/tmp") / f"picklejail-cache-{os.getpid()}"
    public.mkdir(exist_ok=True)
    public.chmod(0o755)
    secret = public / "secret.pt"
    shutil.copy(CNN, secret)
    secret.chmod(0o600)
    d = Daemon(public, "--cache-bytes", 1 << 30)
    try:
        with Client(d.socket_path) as c:
            c.load(path=secret)
            assert c.load(path=secret)[0]["cached"]  # root has it cached now
        script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from daemon_support import Client, ProtocolError
with Client({d.socket_path!r}) as c:
    try:
        c.load(path={str(secret)!r})
        print("loaded")
    except ProtocolError as e:
        print(e.code)
"""
        res = subprocess.run([sys.executable, "-c", script], user=NOBODY, group=NOBODY,
                             extra_groups=[], capture_output=True, text=True, timeout=60)
        assert res.stdout.strip() == "denied", res.stdout + res.stderr
        assert d.stats()["cache"]["hits"] == 1
    finally:
        d.stop()
        shutil.rmtree(public)


def test_eight_concurrent_loads_convert_once(tmp_path):
    slow = tmp_path / "slow.pkl"
    slow.write_bytes(slow_pickle(2_000_000))
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SLOW_CONFIG))
    d = Daemon(tmp_path, "--config", config, "--cache-bytes", 1 << 30, "--max-requests-per-uid", 8)
    try:
        results, errors = [], []

        def load():
            try:
                with Client(d.socket_path) as c:
                    results.append(c.load(path=slow)[1])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(results) == 8 and len(set(results)) == 1
        stats = d.stats()
        assert stats["workers_started"] == 1, stats
        assert stats["cache"]["coalesced"] + stats["cache"]["hits"] == 7
    finally:
        d.stop()


def test_abandoned_shared_conversion_is_killed(tmp_path):
    slow = tmp_path / "slow.pkl"
    slow.write_bytes(slow_pickle(3_000_000))
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SLOW_CONFIG))
    d = Daemon(tmp_path, "--config", config, "--cache-bytes", 1 << 30)
    try:
        a, b = Client(d.socket_path), Client(d.socket_path)
        a.send({"op": "load", "path": str(slow)})
        b.send({"op": "load", "path": str(slow)})
        time.sleep(0.2)
        a.close()
        assert b.read_line()["ok"], "the other recipient still gets the image"
        b.close()
        c = Client(d.socket_path)
        c.send({"op": "load", "path": str(tmp_path / "slow.pkl"), "select": ["x"]})
        time.sleep(0.2)
        c.close()  # the only recipient left: its worker is killed
        d.wait_idle()
    finally:
        d.stop()
