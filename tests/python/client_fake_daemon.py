"""A stand-in picklejaild for the Python client's tests: protocol v1 on a Unix socket.

It serves ping, load (memfd, shm, inline), inspect, release and stats by running
the real `picklejail` command for each job, so its images and errors are the
real ones. What it adds over the real daemon is misbehaviour on demand, to
test that the client buffers the stream properly and never trusts a reply:

    daemon.chunk = 1           # send every reply one byte at a time
    daemon.tamper = "unsealed" # memfd without seals; also "size", "header", "no_fd",
                               # "extra_fd", "no_global", "bad_json"

Run it in a thread of the test process: FakeDaemon(socket_path, picklejail_bin).
"""

import fcntl
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time

SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
ERROR_LINE = re.compile(r"^picklejail: ([a-z_]+): (.*)$", re.M)


class FakeDaemon:
    def __init__(self, path, picklejail_bin):
        self.path = str(path)
        self.bin = str(picklejail_bin)
        self.chunk = None      # bytes per send; None: a reply and its inline bytes in one send
        self.tamper = None
        self.requests = []     # every request line received, parsed
        self.shm_names = set()  # created and not yet released
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self):
        self._server.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for name in self.shm_names:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ connection loop

    def _serve(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn):
        buffer, fds = b"", []
        with conn:
            while True:
                while b"\n" not in buffer:
                    try:
                        data, new_fds, _, _ = socket.recv_fds(conn, 65536, 1)
                    except OSError:
                        return
                    fds += new_fds
                    if not data:
                        for fd in fds:
                            os.close(fd)
                        return
                    buffer += data
                line, buffer = buffer.split(b"\n", 1)
                request_fds, fds = fds, []
                try:
                    self._answer(conn, json.loads(line), request_fds)
                except OSError:
                    return
                finally:
                    for fd in request_fds:
                        os.close(fd)

    def _send(self, conn, payload, fd=None):
        chunk = self.chunk or len(payload)
        first, rest = payload[:chunk], payload[chunk:]
        if fd is None:
            conn.sendall(first)
        else:
            socket.send_fds(conn, [first], [fd] if not isinstance(fd, list) else fd)
        while rest:
            time.sleep(0.001)  # let the client see separate reads
            conn.sendall(rest[:chunk])
            rest = rest[chunk:]

    def _reply(self, request, fields):
        reply = {"ok": True, **fields}
        if "id" in request:
            reply["id"] = request["id"]
        return json.dumps(reply).encode() + b"\n"

    def _error(self, conn, request, code, message):
        error = {"code": code, "message": message}
        found = re.search(r"\bglobal ([\w.]+) ", message)
        if code == "forbidden_global" and found and self.tamper != "no_global":
            error["global"] = found.group(1)
        reply = {"ok": False, "error": error}
        if "id" in request:
            reply["id"] = request["id"]
        self._send(conn, json.dumps(reply).encode() + b"\n")

    # ------------------------------------------------------------ operations

    def _answer(self, conn, request, fds):
        self.requests.append(request)
        op = request.get("op")
        if op == "ping":
            self._send(conn, self._reply(request, {"version": "fake", "protocol": 1}))
        elif op == "stats":
            self._send(conn, self._reply(request, {"stats": {"requests": len(self.requests)}}))
        elif op == "release":
            name = request.get("shm_name")
            if name not in self.shm_names:
                return self._error(conn, request, "invalid_request", f"unknown shm object {name}")
            self.shm_names.discard(name)
            os.unlink(f"/dev/shm/{name}")
            self._send(conn, self._reply(request, {}))
        elif op in ("load", "inspect"):
            self._job(conn, request, fds)
        else:
            self._error(conn, request, "invalid_request", f"unknown op {op!r}")

    def _run(self, command, request, fds, extra_args, pass_fds):
        args = [self.bin, command, "--local", *extra_args]  # never back to a daemon
        if request.get("policy"):
            args.append(f"--policy={request['policy']}")
        args += [f"--select={s}" for s in request.get("select") or []]
        if request.get("fd"):
            if len(fds) != 1:
                return None, ("invalid_request", "\"fd\": true without an attached fd")
            args += [f"--input-fd={fds[0]}", "checkpoint"]
            pass_fds = [*pass_fds, fds[0]]
        else:
            args.append(request["path"])
        done = subprocess.run(args, pass_fds=pass_fds, capture_output=True, text=True)
        if done.returncode != 0:
            found = ERROR_LINE.findall(done.stderr)
            if not found:
                return None, ("internal", done.stderr.strip())
            code, message = found[-1]
            return None, (code, message.removeprefix("local sandbox: "))
        return done.stdout, None

    def _job(self, conn, request, fds):
        if request["op"] == "inspect":
            out, error = self._run("inspect", request, fds, ["--json"], [])
            if error:
                return self._error(conn, request, *error)
            return self._send(conn, self._reply(request, json.loads(out)))

        transport = request.get("transport", "memfd")
        image = os.memfd_create("fake-image", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            out, error = self._run("convert", request, fds, ["--json", f"--output-fd={image}"],
                                   [image])
            if error:
                return self._error(conn, request, *error)
            size = json.loads(out)["size"]
            data = os.pread(image, size, 0)
            fields = {"size": size, "tensors": json.loads(out)["tensors"], "transport": transport,
                      "format": "zip", "policy": request.get("policy", "weights"), "cached": False}
            if self.tamper == "size":
                fields["size"] = size + 1
            if self.tamper == "header":
                data = data[:8] + b"[" + data[9:]  # the header is no longer a JSON object
            if self.tamper == "bad_json":
                return self._send(conn, b"{not json\n")
            if transport == "memfd":
                self._send_memfd(conn, request, fields, image, data)
            elif transport == "inline":
                self._send(conn, self._reply(request, fields) + data)
            else:
                self._send_shm(conn, request, fields, data)
        finally:
            os.close(image)

    def _send_memfd(self, conn, request, fields, sealed, data):
        fd = sealed
        if self.tamper in ("unsealed", "header"):
            fd = os.memfd_create("fake-unsealed", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
            os.write(fd, data)
            if self.tamper == "header":
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        try:
            if self.tamper == "no_fd":
                self._send(conn, self._reply(request, fields))
            elif self.tamper == "extra_fd":
                self._send(conn, self._reply(request, fields), [fd, fd])
            else:
                self._send(conn, self._reply(request, fields), fd)
        finally:
            if fd != sealed:
                os.close(fd)

    def _send_shm(self, conn, request, fields, data):
        name = f"picklejail-fake-{os.geteuid()}-{secrets.token_hex(8)}"
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as out:
            out.write(data)
        self.shm_names.add(name)
        fields.update(shm_name=name, shm_path=f"/dev/shm/{name}", ttl_s=60)
        self._send(conn, self._reply(request, fields))
