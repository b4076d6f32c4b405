"""The client side of the daemon's socket protocol, version 1 (docs/protocol.md).

Messages are JSON lines on a Unix stream socket. The stream is buffered here:
a reply line may arrive in pieces, and an inline image's bytes may arrive in
the same read as the end of its reply line. A reply's fd (memfd transport)
arrives as SCM_RIGHTS data with the first byte of its line; fds are received
close-on-exec and every fd that is not handed on is closed.

Nothing the daemon sends is trusted: replies are checked field by field, the
memfd's seals and size are checked before mapping, a shm object is opened by
the name the protocol defines (never a path the daemon picks) and copied, and
the image itself is checked by image.parse_image before use.
"""

import errno
import json
import os
import re
import socket
import stat
import warnings
from contextlib import contextmanager

from .errors import (Denied, InvalidRequest, PicklejailError, ProtocolError, Timeout,
                     error_for, failing_as)
from .memory import copy_fd_to_private, map_sealed_memfd, private_memory

DEFAULT_SOCKET = "/run/picklejail/picklejail.sock"
ENV_SOCKET = "PICKLEJAIL_SOCKET"
TRANSPORTS = ("memfd", "shm", "inline")
MAX_REQUEST_LINE = 65536  # including the newline, the daemon's limit
# Replies have no documented cap (an inspect listing grows with the tensor
# count); this only bounds what a misbehaving daemon can make us buffer.
MAX_REPLY_LINE = 256 * 1024 * 1024
_RECV_CHUNK = 65536
# shm_open(3) names: one path component under /dev/shm.
_SHM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
SHM_DIR = "/dev/shm"


def socket_path(explicit=None):
    """The `socket=` argument, else $PICKLEJAIL_SOCKET, else the default path."""
    if explicit is not None:
        return os.fspath(explicit)
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


class Unreachable(Exception):
    """No daemon listens at the socket path (it is missing, or the connection is refused)."""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _close_all(fds):
    for fd in fds:
        os.close(fd)


class DaemonConnection:
    """One connection to picklejaild; requests are sent one at a time."""

    def __init__(self, path, timeout=None):
        """`timeout`: seconds any one send or receive may wait (None: no limit, the
        daemon's own per-request deadline still ends every job)."""
        self.path = os.fspath(path)
        self.mode = f"daemon {self.path}"
        self._buffer = bytearray()
        self._fds = []
        self._next_id = 1
        self._timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            self._sock.close()
            raise Unreachable(f"{self.path}: {error.strerror}") from None
        except PermissionError as error:
            self._sock.close()
            raise Denied("denied", f"cannot connect: {error.strerror}", mode=self.mode) from None
        except OSError as error:
            self._sock.close()
            if isinstance(error, TimeoutError):
                raise self._failure("connecting", error) from None
            raise ProtocolError("protocol_error", f"cannot connect: {error.strerror}",
                                mode=self.mode) from None

    def _failure(self, what, error):
        """The error for a failed socket operation: Timeout when `timeout` ran out."""
        if isinstance(error, TimeoutError):
            return Timeout("timeout", f"{what} took longer than the client's timeout of "
                           f"{self._timeout} s", mode=self.mode)
        return ProtocolError("protocol_error", f"{what} failed: {error}", mode=self.mode)

    def close(self):
        _close_all(self._fds)
        self._fds = []
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ framing

    def _send(self, line, fd):
        try:
            if fd is None:
                self._sock.sendall(line)
                return
            sent = socket.send_fds(self._sock, [line], [fd])
            if sent < len(line):  # the fd went with the first part; the rest follows
                self._sock.sendall(line[sent:])
        except OSError as error:
            raise self._failure("sending the request", error) from None

    def _receive(self):
        try:
            data, fds, flags, _ = socket.recv_fds(self._sock, _RECV_CHUNK, 1,
                                                  socket.MSG_CMSG_CLOEXEC)
        except OSError as error:
            raise self._failure("reading the reply", error) from None
        self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("protocol_error", "the daemon attached more than one fd",
                                mode=self.mode)
        if not data:
            raise ProtocolError("protocol_error", "the daemon closed the connection",
                                mode=self.mode)
        self._buffer += data

    def _read_line(self):
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line
            searched = len(self._buffer)
            if searched > MAX_REPLY_LINE:
                raise ProtocolError("protocol_error", "reply line too long", mode=self.mode)
            self._receive()

    def _read_exactly(self, size):
        """The next `size` bytes of the stream, in private memory (inline transport)."""
        memory = private_memory(size)
        view = memoryview(memory)
        try:
            done = min(size, len(self._buffer))
            view[:done] = self._buffer[:done]
            del self._buffer[:done]
            while done < size:
                try:
                    n = self._sock.recv_into(view[done:])
                except OSError as error:
                    raise self._failure("reading the image", error) from None
                if n == 0:
                    raise ProtocolError("protocol_error", f"the connection closed after {done} of "
                                        f"{size} inline bytes", mode=self.mode)
                done += n
        finally:
            view.release()
        return memory

    def request(self, fields, fd=None):
        """Send one request; returns (reply, fds) for ok replies, raises the error otherwise.

        The caller owns the returned fds.
        """
        ident = self._next_id
        self._next_id += 1
        line = json.dumps({**fields, "id": ident}, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_REQUEST_LINE:
            raise InvalidRequest("invalid_request", f"request of {len(line)} bytes exceeds the "
                                 f"protocol's {MAX_REQUEST_LINE}-byte line limit", mode=self.mode)
        self._send(line, fd)
        line = self._read_line()
        fds, self._fds = self._fds, []
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            _close_all(fds)
            raise ProtocolError("protocol_error", f"reply is not a JSON object line: {error}",
                                mode=self.mode) from None
        if "id" in reply and reply["id"] != ident:
            _close_all(fds)
            raise ProtocolError("protocol_error", f"reply to request {reply['id']!r} while "
                                f"waiting for {ident}", mode=self.mode)
        if reply.get("ok") is True:
            return reply, fds
        _close_all(fds)
        raise self._error(reply)

    def _error(self, reply):
        error = reply.get("error") if reply.get("ok") is False else None
        if not (isinstance(error, dict) and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str)):
            return ProtocolError("protocol_error", f"reply is neither ok nor an error: "
                                 f"{json.dumps(reply)[:300]}", mode=self.mode)
        name = error.get("global")
        return error_for(error["code"], error["message"],
                         global_name=name if isinstance(name, str) else None, mode=self.mode)

    def _ok(self, fields, fd=None):
        reply, fds = self.request(fields, fd)
        if fds:
            _close_all(fds)
            raise ProtocolError("protocol_error", f"unexpected fd with the {fields['op']} reply",
                                mode=self.mode)
        return reply

    # ------------------------------------------------------------ operations

    def ping(self):
        return self._ok({"op": "ping"})

    def stats(self):
        return self._ok({"op": "stats"})

    def release(self, shm_name):
        return self._ok({"op": "release", "shm_name": shm_name})

    @contextmanager
    def _input_fd(self, source):
        """The checkpoint as an fd this process opened (or was given).

        A path is opened here, with our own credentials, and passed by fd: the
        daemon then never resolves a path for us, and the cache keys on the
        file we opened.
        """
        if source.path is None:
            yield source.fd
            return
        try:
            fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as error:
            code = "denied" if error.errno in (errno.EACCES, errno.EPERM) else "io_error"
            raise error_for(code, f"cannot open {source.path}: {error.strerror}",
                            mode=self.mode) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise error_for("io_error", f"{source.path} is not a regular file", mode=self.mode)
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _job(op, policy, select):
        fields = {"op": op, "fd": True}
        if policy is not None:
            fields["policy"] = policy
        if select is not None:
            fields["select"] = list(select)
        return fields

    def inspect(self, source, *, policy=None, select=None):
        """The inspect report (the reply without "ok" and "id")."""
        with self._input_fd(source) as fd:
            reply = self._ok(self._job("inspect", policy, select), fd=fd)
        return {k: v for k, v in reply.items() if k not in ("ok", "id")}

    def load(self, source, *, policy=None, select=None, transport="memfd", mmap=False):
        """Returns (private mapping of the image, reply); the image is not parsed yet.

        mmap: ask for the layout-only image of a mapped load (mapped.py).
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        fields = self._job("load", policy, select)
        fields["transport"] = transport
        if mmap:
            fields["mmap"] = True
        with self._input_fd(source) as fd:
            reply, fds = self.request(fields, fd=fd)
        try:
            with failing_as(self.mode):
                size = reply.get("size")
                if not _is_count(size):
                    raise ProtocolError("protocol_error", f"reply size {size!r} is not a byte count")
                if reply.get("transport", transport) != transport:
                    raise ProtocolError("protocol_error", f"asked for transport {transport}, "
                                        f"the reply says {reply.get('transport')!r}")
                if len(fds) != (1 if transport == "memfd" else 0):
                    raise ProtocolError("protocol_error", f"{len(fds)} fds with a {transport} reply")
                if transport == "memfd":
                    return map_sealed_memfd(fds[0], size), reply
                if transport == "inline":
                    return self._read_exactly(size), reply
                return self._fetch_shm(reply, size), reply
        finally:
            _close_all(fds)

    def _fetch_shm(self, reply, size):
        name = reply.get("shm_name")
        if not isinstance(name, str) or not _SHM_NAME.fullmatch(name) or name in (".", ".."):
            raise ProtocolError("protocol_error", f"bad shm_name {name!r}")
        # What shm_open(name) opens on Linux; never a path chosen by the reply.
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise ProtocolError("protocol_error", f"cannot open {path}: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise ProtocolError("protocol_error", f"{path} is not a shm object owned by us")
            if info.st_size != size:
                raise ProtocolError("protocol_error",
                                    f"{path} holds {info.st_size} bytes, the reply said {size}")
            # A shm object cannot be sealed: it could change or shrink under a
            # mapping (SIGBUS), so it is copied once into private memory.
            return copy_fd_to_private(fd, size)
        finally:
            os.close(fd)
            self._release_quietly(name)

    def _release_quietly(self, name):
        try:
            self.release(name)
        except PicklejailError as error:
            # The image is already ours; the object goes away after its ttl anyway.
            warnings.warn(f"picklejail: releasing shm object {name} failed: {error}",
                          RuntimeWarning, stacklevel=3)
