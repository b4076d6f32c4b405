"""Support for the multi-user suite: a root picklejaild reachable by every uid,
processes that act as other real uids, and probes of the daemon's process.

Nothing here trusts the daemon: every socket has a timeout, every child
process a deadline after which it is killed.
"""

import fcntl
import json
import mmap
import os
import pickle
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(REPO / "tests" / "python"))

from daemon_support import (  # noqa: E402  (reused: binary location, the doc-only client)
    F_GET_SEALS, SEALS, Client, daemon_binary, policy_dir)

# Real, distinct uids. None needs a passwd entry.
ATTACKER = 40001
VICTIM = 40002
THIRD = 40003
BYSTANDER = 65534  # nobody: "another user" whose service must not suffer

# Flags the new daemon adds (issue 14). An older daemon refuses unknown flags at
# start, so they are passed only when its --help lists them; the tests then fail
# on the behaviour they check, not on a daemon that never started.
NEW_FLAGS = ("--max-connections-per-uid", "--line-timeout", "--write-timeout",
             "--max-reply-bytes-per-uid", "--shm-prefix", "--blocking-threads")
OLD_SHM_PREFIX = "picklejail"
MiB = 1 << 20


# ---------------------------------------------------------------- small helpers

def wait_for(condition, timeout, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid):
    """{fd number: readlink target} of a process (root only)."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# ---------------------------------------------------------------- the daemon

_HELP = {}


def supported_flags(binary):
    binary = str(binary)
    if binary not in _HELP:
        res = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
        _HELP[binary] = set(re.findall(r"--[a-z][a-z0-9-]*", res.stdout + res.stderr))
    return _HELP[binary]


def fresh_shm_prefix():
    return "pjtest" + secrets.token_hex(5)


class MUDaemon:
    """picklejaild as root on a socket every uid can reach (mode 0666, directory
    0755), with a private --shm-prefix; stderr (the audit log) kept in a file."""

    def __init__(self, world, *args, shm_prefix=None, config=None, nofile=None,
                 socket_dir=None, name="daemon"):
        self.binary = daemon_binary()
        if socket_dir is None:
            socket_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=world))
        self.dir = Path(socket_dir)
        self.dir.chmod(0o755)
        self.socket_path = str(self.dir / "pj.sock")
        self.log_path = self.dir / "audit.log"
        self.requested_prefix = shm_prefix or fresh_shm_prefix()
        args = [str(a) for a in args] + ["--shm-prefix", self.requested_prefix]
        if config is not None:
            config_path = self.dir / "picklejaild.json"
            config_path.write_text(json.dumps(config))
            args += ["--config", str(config_path)]
        flags = supported_flags(self.binary)
        kept, self.dropped = [], []
        i = 0
        while i < len(args):
            if args[i] in NEW_FLAGS and args[i] not in flags:
                self.dropped.append(args[i])
                i += 2
                continue
            kept.append(args[i])
            i += 1
        self.shm_prefix = (OLD_SHM_PREFIX if "--shm-prefix" in self.dropped
                           else self.requested_prefix)
        self.cmd = [str(self.binary), "--socket", self.socket_path, "--socket-mode", "0666",
                    "--policy-dir", str(policy_dir()), *kept]
        self._log = open(self.log_path, "ab")
        self.shm_before = set(os.listdir("/dev/shm"))

        def limit_fds():
            if nofile is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log,
                                     preexec_fn=limit_fds if nofile else None)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"picklejaild exited {self.proc.returncode}: {self.log()}")
            try:
                self.request({"op": "ping"}, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"picklejaild did not come up: {self.log()}")
                time.sleep(0.02)

    # -- what it said
    def log(self):
        return self.log_path.read_text(errors="replace")

    def log_size(self):
        return self.log_path.stat().st_size

    def audit_entries(self, since=0):
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def requests(self, since=0, uid=None):
        return [e for e in self.audit_entries(since) if e.get("event") == "request"
                and (uid is None or e.get("uid") == uid)]

    # -- talking to it as root
    def request(self, message, timeout=10):
        with MUClient(self.socket_path, timeout) as c:
            return c.request(message, check=False)

    def stats(self):
        reply = self.request({"op": "stats"})
        assert reply.get("ok"), reply
        return reply["stats"]

    def alive(self):
        return self.proc.poll() is None

    # -- its process
    def fd_count(self):
        return fd_count(self.pid)

    def settled_fd_count(self, timeout=10):
        previous = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.fd_count()
            if current == previous:
                return current
            previous = current
            time.sleep(0.2)
        return previous

    def rss(self):
        return rss_bytes(self.pid)

    def cpu(self):
        return cpu_seconds(self.pid)

    def children(self):
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def wait_idle(self, timeout=20):
        def idle():
            s = self.stats()
            return s["workers_running"] == 0 and s["queued"] == 0 and not self.children()
        wait_for(idle, timeout, 0.05, "the daemon to be idle")

    def shm_names(self, uid=None):
        start = f"{self.shm_prefix}-" + ("" if uid is None else f"{uid}-")
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(start))

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def stop(self):
        """SIGTERM, then tidy what a crash left in /dev/shm: everything under our
        own prefix, or (an old daemon, with the shared default prefix) only new
        objects of this suite's throwaway uids."""
        code = self.kill(signal.SIGTERM)
        if self.shm_prefix != OLD_SHM_PREFIX:
            names = self.shm_names()
        else:
            names = [n for n in set(os.listdir("/dev/shm")) - self.shm_before
                     if any(n.startswith(f"{OLD_SHM_PREFIX}-{uid}-")
                            for uid in (ATTACKER, VICTIM, THIRD))]
        for name in names:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass
        return code


# ---------------------------------------------------------------- a client with deadlines

class MUClient(Client):
    """daemon_support.Client with a short timeout on every socket operation."""

    def __init__(self, path, timeout=10):  # noqa: D107 - deliberately not calling super
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""
        self.fds = []

    def take_fd(self):
        assert len(self.fds) == 1, f"expected one fd with the reply, got {self.fds}"
        return self.fds.pop()


def image_from_memfd(fd, size):
    try:
        assert fcntl.fcntl(fd, F_GET_SEALS) & SEALS == SEALS, "memfd is not sealed"
        assert os.fstat(fd).st_size == size
        if size == 0:
            return b""
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            return bytes(m)
    finally:
        os.close(fd)


def reply_code(reply):
    if reply is None:
        return None
    if reply.get("ok"):
        return "ok"
    return reply.get("error", {}).get("code")


def one_request(socket_path, message, fd=None, timeout=10, read_image=True):
    """Send one request on a fresh connection; returns (reply, image bytes or None).
    A connection the daemon drops gives ({"ok": False, "error": {"code": "closed"}}, None)."""
    try:
        with MUClient(socket_path, timeout) as c:
            c.send(message, fd)
            reply = c.read_line()
            image = None
            if reply.get("ok") and read_image and message.get("op") == "load":
                transport = message.get("transport", "memfd")
                if transport == "memfd":
                    image = image_from_memfd(c.take_fd(), reply["size"])
                elif transport == "inline":
                    image = c.read_exact(reply["size"])
            return reply, image
    except (ConnectionError, BrokenPipeError) as e:
        return {"ok": False, "error": {"code": "closed", "message": repr(e)}}, None
    except socket.timeout:
        return {"ok": False, "error": {"code": "no_reply", "message": f"none in {timeout} s"}}, None


def timed_ping(socket_path, timeout=5):
    """Seconds from connect to the ping's reply (inf if none came)."""
    start = time.monotonic()
    try:
        with MUClient(socket_path, timeout) as c:
            reply = c.request({"op": "ping"}, check=False)
        if not reply.get("ok"):
            return float("inf"), reply
        return time.monotonic() - start, reply
    except (OSError, ValueError) as e:
        return float("inf"), {"ok": False, "error": {"code": "no_reply", "message": repr(e)}}


# ---------------------------------------------------------------- other uids

class _Channel:
    """Length-prefixed pickles over a pair of pipes (both ends are ours)."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.pending = b""

    def put(self, obj):
        data = pickle.dumps(obj)
        data = struct.pack("<Q", len(data)) + data
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]

    def get(self, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self.pending) >= 8:
                (n,) = struct.unpack("<Q", self.pending[:8])
                if len(self.pending) >= 8 + n:
                    obj = pickle.loads(self.pending[8:8 + n])
                    self.pending = self.pending[8 + n:]
                    return obj
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.rfd], [], [], wait)
            if not ready:
                raise TimeoutError("no message from the other process in time")
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise EOFError("the other process went away")
            self.pending += chunk

    def close(self):
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _agent_loop(chan):
    state = {}
    while True:
        msg = chan.get(None)
        if msg is None:
            return
        fn, args, kwargs = msg
        try:
            chan.put(("ok", fn(state, *args, **kwargs)))
        except BaseException:  # noqa: BLE001 - reported to the harness
            chan.put(("error", traceback.format_exc()))


class Agent:
    """A forked process running as a real other uid (setgroups([]), setresgid,
    setresuid; no passwd entry needed). It runs module-level functions
    fn(state, *args) sent by the harness, one at a time; `state` is a dict kept
    between calls (open connections, files)."""

    def __init__(self, uid, gid=None, umask=0o022):
        gid = uid if gid is None else gid
        self.uid = uid
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: nothing but the two pipe ends and stdio survives
            code = 1
            try:
                keep = {0, 1, 2, to_r, from_w}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) not in keep:
                        try:
                            os.close(int(name))
                        except OSError:
                            pass
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                os.umask(umask)
                os.chdir("/")
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _agent_loop(_Channel(to_r, from_w))
                code = 0
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(to_r)
        os.close(from_w)
        self.pid = pid
        self.chan = _Channel(from_r, to_w)
        self.outstanding = 0

    def start(self, fn, *args, **kwargs):
        """Send a call without waiting for it; collect it with wait()."""
        self.chan.put((fn, args, kwargs))
        self.outstanding += 1

    def wait(self, timeout=30):
        try:
            kind, value = self.chan.get(timeout)
        except (TimeoutError, EOFError) as e:
            self.kill()
            raise AssertionError(f"uid {self.uid}'s process: {e}") from None
        self.outstanding -= 1
        if kind == "error":
            raise AssertionError(f"in uid {self.uid}'s process:\n{value}")
        return value

    def poll(self, timeout):
        """The pending call's result if it comes within `timeout`; otherwise raises
        TimeoutError and the call goes on."""
        kind, value = self.chan.get(timeout)
        self.outstanding -= 1
        if kind == "error":
            raise AssertionError(f"in uid {self.uid}'s process:\n{value}")
        return value

    def call(self, fn, *args, timeout=30, **kwargs):
        self.start(fn, *args, **kwargs)
        return self.wait(timeout)

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(5)

    def _reap(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.01)
        else:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.chan.close()

    def close(self, timeout=10):
        """Ask it to exit (its sockets close with it); kill it if it does not."""
        try:
            if self.outstanding == 0:
                self.chan.put(None)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self._reap(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_as(uid, fn, *args, timeout=30, **kwargs):
    with Agent(uid) as agent:
        return agent.call(fn, *args, timeout=timeout, **kwargs)


# ---------------------------------------------------------------- actions run as a uid
# Every action takes the agent's state dict first.

def act_ping(state, socket_path, timeout=5):
    return timed_ping(socket_path, timeout)


def act_request(state, socket_path, message, timeout=10, read_image=True):
    reply, image = one_request(socket_path, message, timeout=timeout, read_image=read_image)
    return reply, image


def act_load_ok(state, socket_path, path, transport="memfd", timeout=30, **fields):
    """A load that must succeed; returns (reply, image)."""
    message = {"op": "load", "path": str(path), "transport": transport, **fields}
    reply, image = one_request(socket_path, message, timeout=timeout)
    assert reply.get("ok"), reply
    if transport == "shm":
        st = os.stat(reply["shm_path"])
        assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o600, st
        with open(reply["shm_path"], "rb") as f:
            image = f.read()
        one_request(socket_path, {"op": "release", "shm_name": reply["shm_name"]})
    assert len(image) == reply["size"]
    return reply, image


def act_mkdir(state, path, mode):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    return str(path)


def act_copy(state, src, dst, mode=0o644):
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)
    return str(dst)


def act_close_all(state):
    """Close every socket and fd the agent keeps in state['socks'] / state['fds']."""
    for s in state.pop("socks", []):
        try:
            s.close()
        except OSError:
            pass
    for fd in state.pop("fds", []):
        try:
            os.close(fd)
        except OSError:
            pass
    return True


# ---------------------------------------------------------------- checkpoints

def slow_pickle(count):
    """A valid plain pickle that takes the worker a while: a list of many floats
    (as tests/python/test_daemon.py makes it)."""
    batch = b"(" + b"".join(b"G" + struct.pack(">d", i + 0.5) for i in range(1000)) + b"e"
    return b"\x80\x02]q\x00" + batch * (count // 1000) + b"."


SLOW_CONFIG = {"loader_limits": {"max_objects": 20_000_000}}


def slow_copy(directory, name):
    """A fresh copy of the slow pickle (its own inode, so the cache never joins it)."""
    path = Path(directory) / name
    shutil.copyfile(Path(directory) / "slow.pkl", path)
    path.chmod(0o644)
    return path

GENERATOR = r"""
import collections, sys, torch
out = sys.argv[1]
def u8(n, value):
    return torch.full((n,), value, dtype=torch.uint8)
def save(name, d):
    torch.save(collections.OrderedDict(d), f"{out}/{name}")
# A victim's secret: tensors named victim_secret.*, every byte 0x5A.
save("victim.pt", {"victim_secret.weight": u8(65536, 0x5A), "victim_secret.bias": u8(4096, 0x5A)})
# The attacker's own checkpoint: every byte 0x33.
save("attacker.pt", {"attacker_own.weight": u8(65536, 0x33)})
# X and Y: same names and shapes (so their images have the same size), X's
# bytes all 0x11, Y's all 0x77.
save("x.pt", {f"blob.{i}": u8(2 * 1024 * 1024, 0x11) for i in range(4)})
save("y.pt", {f"blob.{i}": u8(2 * 1024 * 1024, 0x77) for i in range(4)})
# A large image for the shm copy window: 96 MiB of 0x42.
save("big.pt", {f"big.{i}": u8(24 * 1024 * 1024, 0x42) for i in range(4)})
# A long conversion for the fairness test: many tensors.
save("large.pt", {f"layer.{i}.weight": torch.full((16,), float(i)) for i in range(%(large_tensors)d)})
# A large header for inspect: %(wide_tensors)d one-byte tensors (a ~2 MB listing).
save("wide.pt", {f"encoder.layers.{i}.attention.output.dense.weight": u8(1, 1)
                 for i in range(%(wide_tensors)d)})
print("ok")
"""

LARGE_TENSORS = 64_000  # a job long enough (~0.3 s here) to judge fairness by
WIDE_TENSORS = 20_000


def make_checkpoints(directory):
    script = GENERATOR % {"large_tensors": LARGE_TENSORS, "wide_tensors": WIDE_TENSORS}
    res = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True,
                         text=True, timeout=300)
    if res.returncode != 0:
        return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "generator failed"
    for p in Path(directory).iterdir():
        p.chmod(0o644)
    return None
