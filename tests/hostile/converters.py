"""Ways to hand one file to picklejail: "convert one file -> (code, message, seconds)".

The hostile suite runs every file through each converter selected by
PICKLEJAIL_HOSTILE_CONVERTERS (comma-separated names, default "cli"). To add
another path (e.g. the daemon, docs/protocol.md), register a factory here:

    @register("daemon")
    def daemon_converter(workdir: Path) -> Converter:
        ...                          # start/find picklejaild, return a callable
        def convert(path, *, policy, limits, deadline_s, memory_bytes) -> Outcome: ...
        return convert

A factory may raise ConverterUnavailable(reason) to have the suite skip it.
The callable must return an Outcome; it must not raise for a refused file.
"""

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    code: str                 # "ok" or the error code (common/error.hpp names)
    message: str              # the error message, "" when ok
    seconds: float            # wall time of the whole conversion
    message_bytes: bytes = b""  # the message as received, before decoding
    output: Optional[bytes] = None  # the safetensors image when ok (may be None)


Converter = Callable[..., Outcome]
FACTORIES: Dict[str, Callable[[Path], Converter]] = {}


class ConverterUnavailable(Exception):
    pass


def register(name):
    def wrap(factory):
        FACTORIES[name] = factory
        return factory
    return wrap


def selected():
    names = os.environ.get("PICKLEJAIL_HOSTILE_CONVERTERS", "cli")
    return [n.strip() for n in names.split(",") if n.strip()]


def picklejail_bin() -> Path:
    env = os.environ.get("PICKLEJAIL_BIN")
    return Path(env) if env else REPO / "build" / "bin" / "picklejail"


ERROR_LINE = re.compile(rb"^picklejail: ([a-z_]+): (.*)$")


@register("cli")
def cli_converter(workdir: Path) -> Converter:
    binary = picklejail_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ConverterUnavailable(f"picklejail binary not found: {binary} (set PICKLEJAIL_BIN)")
    counter = [0]

    def convert(path: Path, *, policy: str = "weights", limits: Optional[dict] = None,
                deadline_s: int = 10, memory_bytes: int = 2 << 30) -> Outcome:
        counter[0] += 1
        out = workdir / f"out-{counter[0]}.safetensors"
        cmd = [str(binary), "convert", str(path), str(out), "--policy", policy, "--local",
               "--deadline", str(deadline_s), "--memory", str(memory_bytes)]
        if limits:
            limits_file = workdir / f"limits-{counter[0]}.json"
            limits_file.write_text(json.dumps(limits))
            cmd += ["--limits", str(limits_file)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=deadline_s + 60)
        except subprocess.TimeoutExpired:
            return Outcome("hung", "the CLI did not return", time.perf_counter() - start)
        seconds = time.perf_counter() - start
        try:
            if proc.returncode == 0:
                return Outcome("ok", "", seconds, b"", out.read_bytes())
            lines = [l for l in proc.stderr.splitlines() if l.startswith(b"picklejail: ")]
            match = ERROR_LINE.match(lines[-1]) if lines else None
            if match is None:
                return Outcome(f"exit{proc.returncode}", proc.stderr.decode("utf-8", "replace"),
                               seconds, proc.stderr)
            raw = match.group(2)
            return Outcome(match.group(1).decode(), raw.decode("utf-8", "replace"), seconds, raw)
        finally:
            out.unlink(missing_ok=True)

    return convert


class _DaemonConnection:
    """A protocol v1 client (docs/protocol.md) that reads replies and inline images."""

    def __init__(self, path):
        import socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(path)
        self.buffer = bytearray()

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("picklejaild closed the connection")
        self.buffer += data  # bytearray: amortized appends, not quadratic copies

    def request(self, message):
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while b"\n" not in self.buffer:
            self._fill()
        end = self.buffer.index(b"\n")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return json.loads(line)

    def read_exact(self, n):
        while len(self.buffer) < n:
            self._fill()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def close(self):
        self.sock.close()


@register("daemon")
def daemon_converter(workdir: Path) -> Converter:
    """Every file through one long-lived picklejaild (one per distinct set of loader
    limits, since limits are the daemon's configuration, not the request's). After
    each file the same connection must still answer a ping: the daemon stays up."""
    import atexit
    binary = picklejail_bin().parent / "picklejaild"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ConverterUnavailable(f"picklejaild not found: {binary}")
    policies = binary.parent.parent / "share" / "picklejail" / "policies"
    daemons = {}

    def stop_all():
        for proc, _ in daemons.values():
            proc.terminate()
            proc.wait(timeout=60)

    atexit.register(stop_all)

    def daemon_for(limits, deadline_s, memory_bytes):
        key = json.dumps(limits or {}, sort_keys=True)
        if key not in daemons:
            index = len(daemons)
            config = workdir / f"daemon-{index}.json"
            config.write_text(json.dumps({"loader_limits": limits or {}, "deadline_s": deadline_s,
                                          "worker_memory_bytes": memory_bytes}))
            sock = str(workdir / f"daemon-{index}.sock")
            log = open(workdir / f"daemon-{index}.log", "wb")
            proc = subprocess.Popen([str(binary), "--config", str(config), "--socket", sock,
                                     "--policy-dir", str(policies)], stderr=log)
            for _ in range(400):
                if os.path.exists(sock):
                    break
                time.sleep(0.025)
            daemons[key] = (proc, sock)
        proc, sock = daemons[key]
        if proc.poll() is not None:
            raise AssertionError(f"picklejaild exited with {proc.returncode}")
        return sock

    def convert(path: Path, *, policy: str = "weights", limits: Optional[dict] = None,
                deadline_s: int = 10, memory_bytes: int = 2 << 30) -> Outcome:
        sock = daemon_for(limits, deadline_s, memory_bytes)
        start = time.perf_counter()
        connection = _DaemonConnection(sock)
        try:
            reply = connection.request({"op": "load", "path": str(Path(path).resolve()),
                                        "policy": policy, "transport": "inline"})
            if reply.get("ok"):
                output = connection.read_exact(reply["size"])
                outcome = Outcome("ok", "", time.perf_counter() - start, b"", output)
            else:
                message = reply["error"]["message"]
                outcome = Outcome(reply["error"]["code"], message, time.perf_counter() - start,
                                  message.encode("utf-8", "surrogateescape"))
            if not connection.request({"op": "ping"}).get("ok"):
                return Outcome("daemon_unwell", "ping failed after the file", outcome.seconds)
            return outcome
        finally:
            connection.close()

    return convert
