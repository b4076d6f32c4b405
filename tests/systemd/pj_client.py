"""A minimal picklejaild client for the checks in a booted container (standard
library only, no picklejail code: the checks test the service, not a client)."""

import json
import mmap
import os
import socket
import struct

SOCKET = "/run/picklejail/picklejail.sock"


class Connection:
    def __init__(self, path=None, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path or SOCKET)
        self.buffer = b""
        self.fds = []

    def close(self):
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, message, fd=None):
        line = json.dumps(message).encode() + b"\n"
        if fd is None:
            self.sock.sendall(line)
        else:
            socket.send_fds(self.sock, [line], [fd])

    def read_line(self):
        while b"\n" not in self.buffer:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            self.fds.extend(fds)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, message, fd=None):
        self.send(message, fd)
        return self.read_line()

    def take_fd(self):
        if not self.fds:
            raise AssertionError("the reply carried no fd")
        return self.fds.pop(0)


def load_file(path, **fields):
    """Loads `path` through the daemon with the file's fd attached; returns the
    reply and, for the memfd transport, the safetensors header read from the
    sealed memfd."""
    with open(path, "rb") as f, Connection() as c:
        reply = c.request({"op": "load", "fd": True, **fields}, fd=f.fileno())
        if not reply.get("ok") or reply.get("transport", "memfd") != "memfd":
            return reply, None
        fd = c.take_fd()
        try:
            return reply, safetensors_header(fd, reply["size"])
        finally:
            os.close(fd)


def safetensors_header(fd, size):
    if os.fstat(fd).st_size != size:
        raise AssertionError(f"memfd size {os.fstat(fd).st_size} != reply size {size}")
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as image:
        (length,) = struct.unpack("<Q", image[:8])
        return json.loads(image[8:8 + length])


def main(argv):
    """`pj_client.py load-path PATH`: prints the daemon's reply to a load of
    PATH by name, so a check can run it as another user."""
    if len(argv) != 3 or argv[1] != "load-path":
        raise SystemExit("usage: pj_client.py load-path PATH")
    with Connection() as c:
        print(json.dumps(c.request({"op": "load", "path": argv[2]})))


if __name__ == "__main__":
    import sys
    main(sys.argv)
