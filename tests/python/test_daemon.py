"""picklejaild end to end: real sockets, real workers, the protocol as documented.

Every fixture through each transport, fd passing and path loading, two-uid
access control, sealed memfds, shm release and TTL, limits answered with busy,
malformed and oversized lines, clients that vanish mid-request, concurrency,
SIGTERM with work in flight and SIGHUP policy reloads.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import safetensors_read
from daemon_support import Client, Daemon, ProtocolError, daemon_binary, policy_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOBODY = 65534

pytestmark = pytest.mark.skipif(not daemon_binary().is_file(),
                                reason=f"picklejaild not built at {daemon_binary()}")


# ---------------------------------------------------------------- inputs

def fixture_cases(expect):
    for manifest in sorted(FIXTURES.glob("torch-*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            if entry["expect"] == expect:
                yield pytest.param(manifest.parent / entry["file"], entry,
                                   id=f"{manifest.parent.name}/{entry['file']}")


def os_system_pickle(command=b"echo pwned"):
    """GLOBAL os.system + REDUCE, written as opcodes (never unpickled)."""
    return (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command +
            b"\x85R.")


def slow_pickle(count):
    """A valid plain pickle that takes the worker a while: a list of many floats."""
    batch = b"(" + b"".join(b"G" + struct.pack(">d", i + 0.5) for i in range(1000)) + b"e"
    return b"\x80\x02]q\x00" + batch * (count // 1000) + b"."


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("slow") / "slow.pkl"
    path.write_bytes(slow_pickle(3_000_000))
    path.chmod(0o644)
    return path


SLOW_CONFIG = {"loader_limits": {"max_objects": 20_000_000}}


def write_config(tmp_path, **extra):
    path = tmp_path / "picklejaild.json"
    path.write_text(json.dumps({**SLOW_CONFIG, **extra}))
    return path


def assert_matches_manifest(image, entry):
    entries, metadata = safetensors_read.parse_raw(image)
    assert metadata.get("format") == "pt"
    for name, want in entry["tensors"].items():
        stored = name if name in entries else metadata[name]
        dtype, shape, raw = entries[stored]
        want_dtype, want_shape = want["dtype"], want["shape"]
        if want_dtype == "C128":
            want_dtype, want_shape = "F64", want_shape + [2]
        assert (dtype, shape) == (want_dtype, want_shape), name
        assert hashlib.sha256(raw).hexdigest() == want["sha256"], f"{name}: bytes differ"


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, "--max-workers", 2)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()


def shm_objects():
    return {n for n in os.listdir("/dev/shm") if n.startswith("picklejail-")}


@pytest.fixture
def no_new_shm():
    """Asserts at the end that the test left no shared-memory object behind
    (compared with before, so other daemons on the machine do not count)."""
    before = shm_objects()

    def check():
        left = shm_objects() - before
        assert not left, f"shared memory left behind: {left}"
    return check


# ---------------------------------------------------------------- the protocol

def test_ping_reports_protocol_version(shared_daemon):
    with Client(shared_daemon.socket_path) as c:
        reply = c.request({"op": "ping", "id": "abc"})
    assert reply["protocol"] == 1 and reply["id"] == "abc" and reply["version"]


@pytest.mark.parametrize("transport", ["memfd", "shm", "inline"])
@pytest.mark.parametrize("ckpt,entry", fixture_cases("load"))
def test_every_fixture_through_every_transport(shared_daemon, ckpt, entry, transport):
    policy = entry.get("policy", "checkpoint")
    with Client(shared_daemon.socket_path) as c:
        reply, image = c.load(transport, path=ckpt, policy=policy)
    assert reply["transport"] == transport and reply["size"] == len(image)
    assert_matches_manifest(image, entry)


@pytest.mark.parametrize("ckpt,entry", fixture_cases("reject"))
def test_reject_fixtures_are_refused(shared_daemon, ckpt, entry):
    with Client(shared_daemon.socket_path) as c:
        with pytest.raises(ProtocolError) as err:
            c.load(path=ckpt, policy="weights")
    assert err.value.code in ("forbidden_global", "unsupported")


def test_fd_passing_and_several_requests_on_one_connection(shared_daemon):
    ckpt = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
    with Client(shared_daemon.socket_path) as c, open(ckpt, "rb") as f:
        by_fd = c.load("memfd", fd=f.fileno())[1]
        by_path = c.load("memfd", path=ckpt)[1]
        c.request({"op": "ping"})
    assert by_fd == by_path


def test_memfd_is_sealed_and_header_valid(shared_daemon):
    with Client(shared_daemon.socket_path) as c:
        reply = c.request({"op": "load", "path": str(FIXTURES / "torch-1.13" / "params.pt")})
        fd = c.fds.pop()
    try:
        import fcntl
        assert fcntl.fcntl(fd, 1034) == 0xF  # F_GET_SEALS: exactly SEAL|SHRINK|GROW|WRITE
        with pytest.raises(OSError):
            os.write(fd, b"x")
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)
        entries, _ = safetensors_read.parse_raw(os.pread(fd, reply["size"], 0))
        assert entries
    finally:
        os.close(fd)


def test_select_limits_the_tensors(shared_daemon):
    ckpt = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
    with Client(shared_daemon.socket_path) as c:
        _, image = c.load(path=ckpt, select=["0", "1.running_mean"])
    entries, _ = safetensors_read.parse_raw(image)
    assert sorted(entries) == ["0.bias", "0.weight", "1.running_mean"]


def test_inspect_lists_without_data(shared_daemon):
    with Client(shared_daemon.socket_path) as c:
        reply = c.request({"op": "inspect", "path": str(FIXTURES / "torch-2.11" / "cnn_state_dict.pt")})
        assert not c.fds
    assert reply["format"] == "zip" and "collections.OrderedDict" in reply["globals"]
    assert {t["name"] for t in reply["tensors"]} >= {"0.weight", "0.bias"}


def test_errors_name_the_global_and_keep_the_connection(shared_daemon, tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(os_system_pickle())
    with Client(shared_daemon.socket_path) as c:
        reply = c.request({"op": "load", "path": str(evil), "id": 5}, check=False)
        assert reply["ok"] is False and reply["id"] == 5
        assert reply["error"]["code"] == "forbidden_global"
        assert reply["error"]["global"] == "os.system"
        assert "os.system" in reply["error"]["message"]
        assert c.request({"op": "ping"})["ok"]
    audit = [e for e in shared_daemon.audit_entries() if e.get("path") == str(evil)]
    assert audit and audit[-1]["result"] == "forbidden_global"
    assert audit[-1]["globals_refused"] == ["os.system"]
    assert {"uid", "pid", "file", "policy", "duration_ms", "time"} <= set(audit[-1])


@pytest.mark.parametrize("line,why", [
    (b"not json\n", "not valid JSON"),
    (b"[1,2]\n", "JSON object"),
    (b'{"op":"explode"}\n', "unknown op"),
    (b'{"op":"load"}\n', "exactly one"),
    (b'{"op":"load","path":"relative.pt"}\n', "absolute"),
    (b'{"op":"load","path":"/x","transport":"carrier-pigeon"}\n', "transport"),
    (b'{"op":"load","path":"/x","policy":"../../etc/passwd"}\n', "policy"),
    (b'{"op":"load","path":"/x","policy":"nosuchpolicy"}\n', None),
    (b'{"op":"load","fd":true}\n', "exactly one fd"),
    (b'{"op":"release","shm_name":"picklejail-0-doesnotexist"}\n', "no shared memory"),
])
def test_malformed_requests_get_invalid_request(shared_daemon, line, why):
    with Client(shared_daemon.socket_path) as c:
        c.send(None, raw=line)
        reply = c.read_line()
        assert reply["ok"] is False
        assert reply["error"]["code"] in ("invalid_request", "io_error"), reply
        if why:
            assert why in reply["error"]["message"]
        assert c.request({"op": "ping"})["ok"], "connection should stay usable"


def test_oversized_line_is_refused_and_closed(shared_daemon):
    with Client(shared_daemon.socket_path) as c:
        c.send(None, raw=b'{"op":"ping","pad":"' + b"x" * 70_000)
        reply = c.read_line()
        assert reply["error"]["code"] == "invalid_request" and "longer than" in reply["error"]["message"]
        with pytest.raises((ConnectionError, OSError)):
            c.request({"op": "ping"})


def test_path_is_opened_with_the_callers_credentials(tmp_path):
    """A root-only file: root may load it by path; nobody may not, by path or by guessing."""
    src = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
    secret = tmp_path / "secret.pt"
    shutil.copy(src, secret)
    secret.chmod(0o600)
    public_dir = Path("/tmp") / f"picklejail-public-{os.getpid()}"
    public_dir.mkdir(exist_ok=True)
    public_dir.chmod(0o755)
    public = public_dir / "public.pt"
    shutil.copy(src, public)
    public.chmod(0o644)
    tmp_path.chmod(0o755)
    daemon = Daemon(public_dir)  # its socket must be reachable by nobody
    try:
        with Client(daemon.socket_path) as c:
            c.load(path=secret)  # the owner can
        script = f"""
import json, socket, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from daemon_support import Client, ProtocolError
out = {{}}
with Client({daemon.socket_path!r}) as c:
    for name, path in (("secret", {str(secret)!r}), ("public", {str(public)!r})):
        try:
            reply, image = c.load(path=path)
            out[name] = "ok"
        except ProtocolError as e:
            out[name] = e.code
    with open({str(public)!r}, "rb") as f:
        reply, image = c.load(fd=f.fileno(), transport="shm")
        out["public_fd_shm"] = "ok"
print(json.dumps(out))
"""
        res = subprocess.run([sys.executable, "-c", script], user=NOBODY, group=NOBODY,
                             extra_groups=[], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"secret": "denied", "public": "ok", "public_fd_shm": "ok"}
        denied = [e for e in daemon.audit_entries() if e.get("result") == "denied"]
        assert denied and denied[0]["uid"] == NOBODY
    finally:
        daemon.stop()
        shutil.rmtree(public_dir)


def test_fd_must_be_a_readable_regular_file(shared_daemon, tmp_path):
    with Client(shared_daemon.socket_path) as c:
        r, w = os.pipe()
        try:
            reply = c.request({"op": "load", "fd": True}, fd=r, check=False)
            assert reply["error"]["code"] == "io_error" and "regular file" in reply["error"]["message"]
        finally:
            os.close(r)
            os.close(w)
        wo = os.open(tmp_path / "w.pt", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            reply = c.request({"op": "load", "fd": True}, fd=wo, check=False)
            assert reply["error"]["code"] == "denied"
        finally:
            os.close(wo)
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        reply = c.request({"op": "load", "path": str(fifo)}, check=False)  # must not block the daemon
        assert reply["error"]["code"] == "io_error"


# ---------------------------------------------------------------- shared memory

def test_shm_removed_on_release_and_after_ttl(tmp_path, no_new_shm):
    d = Daemon(tmp_path, "--shm-ttl", 1)
    try:
        ckpt = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(ckpt), "transport": "shm"})
            assert os.path.exists(reply["shm_path"])
            c.request({"op": "release", "shm_name": reply["shm_name"]})
            assert not os.path.exists(reply["shm_path"])
            reply = c.request({"op": "load", "path": str(ckpt), "transport": "shm"})
            with open(reply["shm_path"], "rb") as held:  # an open fd outlives the removal
                assert d.stats()["shm_objects"] == 1
                time.sleep(1.6)
                assert not os.path.exists(reply["shm_path"])
                assert len(held.read()) == reply["size"]
            assert d.stats()["shm_objects"] == 0
    finally:
        d.stop()
    no_new_shm()


def test_shm_quota_answers_busy(tmp_path, no_new_shm):
    d = Daemon(tmp_path, "--max-shm-bytes-per-uid", 20_000)
    try:
        ckpt = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"  # 14,448-byte image
        with Client(d.socket_path) as c:
            first = c.request({"op": "load", "path": str(ckpt), "transport": "shm"})
            reply = c.request({"op": "load", "path": str(ckpt), "transport": "shm"}, check=False)
            assert reply["error"]["code"] == "busy"
            c.request({"op": "release", "shm_name": first["shm_name"]})
            c.request({"op": "load", "path": str(ckpt), "transport": "shm"})
    finally:
        d.stop()
    no_new_shm()  # shutdown must remove unreleased objects


# ---------------------------------------------------------------- limits

def start_slow(daemon, slow_file):
    c = Client(daemon.socket_path)
    c.send({"op": "load", "path": str(slow_file)})
    deadline = time.monotonic() + 5
    while daemon.stats()["workers_running"] == 0:
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.005)
    return c


def test_limits_answer_busy(tmp_path, slow_file):
    d = Daemon(tmp_path, "--config", write_config(tmp_path), "--max-workers", 1, "--max-queue", 0)
    try:
        held = start_slow(d, slow_file)
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(FIXTURES / "torch-2.11" / "params.pt")},
                              check=False)
        assert reply["error"]["code"] == "busy", reply
        assert held.read_line()["ok"]
        held.close()
    finally:
        d.stop()


def test_per_uid_limit_answers_busy(tmp_path, slow_file):
    d = Daemon(tmp_path, "--config", write_config(tmp_path), "--max-requests-per-uid", 1)
    try:
        held = start_slow(d, slow_file)
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(slow_file)}, check=False)
        assert reply["error"]["code"] == "busy" and "uid" in reply["error"]["message"]
        assert held.read_line()["ok"]
        held.close()
    finally:
        d.stop()


def test_input_size_and_deadline_limits(tmp_path, slow_file):
    d = Daemon(tmp_path, "--config", write_config(tmp_path), "--max-input-bytes", 1_000_000,
               "--deadline", 0.2)
    try:
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(slow_file)}, check=False)
            assert reply["error"]["code"] == "too_large"
        (tmp_path / "d2").mkdir()
        d2 = Daemon(tmp_path / "d2", "--config", write_config(tmp_path), "--deadline", 0.1)
        try:
            with Client(d2.socket_path) as c:
                started = time.monotonic()
                reply = c.request({"op": "load", "path": str(slow_file)}, check=False)
                assert reply["error"]["code"] == "timeout"
                assert time.monotonic() - started < 5
            d2.wait_idle()
        finally:
            d2.stop()
    finally:
        d.stop()


def test_output_size_limit_is_too_large(tmp_path):
    d = Daemon(tmp_path, "--max-output-bytes", 10_000)
    try:
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(FIXTURES / "torch-2.11" / "cnn_state_dict.pt")},
                              check=False)
        assert reply["error"]["code"] == "too_large", reply
    finally:
        d.stop()


# ---------------------------------------------------------------- faults and load

def test_client_disconnecting_mid_request_leaks_nothing(daemon, slow_file, no_new_shm):
    baseline_fds = daemon.open_fds()
    for _ in range(3):
        c = start_slow(daemon, slow_file)
        c.close()  # gone before the reply
    stats = daemon.wait_idle()
    assert stats["workers_running"] == 0
    time.sleep(0.2)
    assert daemon.open_fds() == baseline_fds
    assert not daemon.children()
    no_new_shm()


def test_sixteen_concurrent_clients_mixed(daemon, tmp_path, no_new_shm):
    good = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
    entry = next(e for e in json.loads((FIXTURES / "torch-2.11" / "manifest.json").read_text())
                 if e["file"] == "cnn_state_dict.pt")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(os_system_pickle())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    baseline_fds = daemon.open_fds()
    failures = []

    def client(n):
        try:
            with Client(daemon.socket_path) as c:
                for i in range(6):
                    kind = (n + i) % 3
                    transport = ("memfd", "shm", "inline")[(n * 7 + i) % 3]
                    if kind == 0:
                        for attempt in range(50):
                            try:
                                _, image = c.load(transport, path=good)
                                break
                            except ProtocolError as e:
                                if e.code != "busy":
                                    raise
                                time.sleep(0.05)
                        assert_matches_manifest(image, entry)
                    else:
                        path = evil if kind == 1 else truncated
                        reply = c.request({"op": "load", "path": str(path)}, check=False)
                        want = "forbidden_global" if kind == 1 else "malformed"
                        assert reply["error"]["code"] in (want, "busy"), reply
        except Exception as e:  # noqa: BLE001 - reported below with the client number
            failures.append((n, repr(e)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    daemon.wait_idle()
    time.sleep(0.2)
    assert daemon.open_fds() == baseline_fds
    no_new_shm()
    assert daemon.proc.poll() is None


def test_sigterm_drains_jobs_in_flight(tmp_path, slow_file):
    d = Daemon(tmp_path, "--config", write_config(tmp_path))
    held = start_slow(d, slow_file)
    d.proc.send_signal(signal.SIGTERM)
    reply = held.read_line()
    assert reply["ok"], "the request in flight should finish"
    assert d.proc.wait(timeout=30) == 0
    held.close()
    assert not os.path.exists(d.socket_path), "the socket file should be removed"
    events = [e.get("event") for e in d.audit_entries()]
    assert "drain" in events and events[-1] == "stop"
    d.stop()


def test_sighup_reloads_policies(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(policy_dir(), policies)
    d = Daemon(tmp_path, "--policy-dir", policies)
    try:
        ckpt = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"
        with Client(d.socket_path) as c:
            reply = c.request({"op": "load", "path": str(ckpt), "policy": "strict"}, check=False)
            assert reply["error"]["code"] == "invalid_request"
            (policies / "strict.json").write_text(json.dumps({"name": "strict", "extends": "weights"}))
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "strict" not in d.stats()["policies"]:
                assert time.monotonic() < deadline, d.log()
                time.sleep(0.02)
            c.load(path=ckpt, policy="strict")
    finally:
        d.stop()


def test_too_many_connections_answer_busy(tmp_path):
    d = Daemon(tmp_path, "--max-connections", 2)
    try:
        a, b = Client(d.socket_path), Client(d.socket_path)
        a.request({"op": "ping"})
        b.request({"op": "ping"})
        with Client(d.socket_path) as c:
            assert c.read_line()["error"]["code"] == "busy"
        a.close()
        b.close()
    finally:
        d.stop()
