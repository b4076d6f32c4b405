"""A picklejaild under test, and a protocol client written only from docs/protocol.md.

The client here deliberately shares no code with client/python: it checks that
the protocol document is enough to talk to the daemon.
"""

import fcntl
import json
import mmap
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
F_GET_SEALS = 1034
SEALS = 0x1 | 0x2 | 0x4 | 0x8  # SEAL, SHRINK, GROW, WRITE


def daemon_binary():
    env = os.environ.get("PICKLEJAILD_BIN")
    if env:
        return Path(env)
    bin_env = os.environ.get("PICKLEJAIL_BIN")
    if bin_env:
        return Path(bin_env).parent / "picklejaild"
    return REPO / "build" / "bin" / "picklejaild"


def policy_dir():
    return daemon_binary().parent.parent / "share" / "picklejail" / "policies"


class Daemon:
    """picklejaild in the foreground on a private socket; stderr (the audit log) kept."""

    def __init__(self, workdir, *args):
        self.socket_path = str(Path(workdir) / "picklejail.sock")
        self.log_path = Path(workdir) / "audit.log"
        self._log = open(self.log_path, "wb")
        args = [str(a) for a in args]
        if "--policy-dir" not in args:
            args += ["--policy-dir", str(policy_dir())]
        cmd = [str(daemon_binary()), "--socket", self.socket_path, *args]
        self.proc = subprocess.Popen(cmd, stderr=self._log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"picklejaild exited {self.proc.returncode}: {self.log()}")
            try:
                with Client(self.socket_path) as c:
                    c.request({"op": "ping"})
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("picklejaild did not come up")

    def log(self):
        return self.log_path.read_text()

    def audit_entries(self):
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def stats(self):
        with Client(self.socket_path) as c:
            return c.request({"op": "stats"})["stats"]

    def open_fds(self):
        """The daemon's fds once no connection is open (the ones our own
        probes made close asynchronously, so wait until the set is stable)."""
        previous = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            current = sorted(os.listdir(f"/proc/{self.proc.pid}/fd"))
            if current == previous:
                return current
            previous = current
            time.sleep(0.15)
        return previous

    def children(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def wait_idle(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s["workers_running"] == 0 and s["queued"] == 0 and not self.children():
                return s
            time.sleep(0.05)
        raise AssertionError(f"daemon not idle: {self.stats()}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode


class ProtocolError(Exception):
    def __init__(self, error):
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]
        self.message = error["message"]
        self.error = error


class Client:
    """One connection; requests one at a time, as docs/protocol.md describes."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buffer = b""
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()

    def send(self, message, fd=None, raw=None):
        data = raw if raw is not None else json.dumps(message).encode() + b"\n"
        if fd is None:
            self.sock.sendall(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def _fill(self):
        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 4)
        self.fds.extend(fds)
        if not data:
            raise ConnectionError("daemon closed the connection")
        self.buffer += data

    def read_line(self):
        while b"\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def read_exact(self, n):
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def request(self, message, fd=None, check=True):
        self.send(message, fd)
        reply = self.read_line()
        if check and not reply.get("ok"):
            raise ProtocolError(reply["error"])
        return reply

    def load(self, transport="memfd", path=None, fd=None, **fields):
        """Returns (reply, image bytes) for any transport, checking what the protocol promises."""
        message = {"op": "load", "transport": transport, **fields}
        if path is not None:
            message["path"] = str(path)
        else:
            message["fd"] = True
        reply = self.request(message, fd)
        size = reply["size"]
        if transport == "memfd":
            assert len(self.fds) == 1, f"expected one fd with the reply, got {self.fds}"
            image_fd = self.fds.pop()
            try:
                assert fcntl.fcntl(image_fd, F_GET_SEALS) & SEALS == SEALS, "memfd is not sealed"
                assert os.fstat(image_fd).st_size == size
                with mmap.mmap(image_fd, size, prot=mmap.PROT_READ) as m:
                    return reply, bytes(m)
            finally:
                os.close(image_fd)
        if transport == "shm":
            st = os.stat(reply["shm_path"])
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid(), st
            with open(reply["shm_path"], "rb") as f:
                data = f.read()
            assert len(data) == size
            self.request({"op": "release", "shm_name": reply["shm_name"]})
            return reply, data
        return reply, self.read_exact(size)
