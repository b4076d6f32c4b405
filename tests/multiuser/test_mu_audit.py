"""The audit log: exactly one line per request, with its real outcome
(issue 14 item 9). Each line is a JSON object with "event":"request", "uid",
"op" (null when the line could not be parsed) and "result"."""

import json
import os
import socket
import time

from mu_support import (ATTACKER, FIXTURES, VICTIM, Agent, MUClient, reply_code, slow_copy,
                        wait_for)

CNN = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"


def _raw_request(socket_path, data, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(socket_path)
    try:
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        buffer = b""
        while b"\n" not in buffer:
            chunk = s.recv(65536)
            if not chunk:
                return "closed without a reply"
            buffer += chunk
        return reply_code(json.loads(buffer.split(b"\n", 1)[0]))
    except OSError as e:
        return repr(e)
    finally:
        s.close()


def act_bad_requests(state, socket_path, some_file):
    nulls = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    try:
        return {
            "invalid_json": _raw_request(socket_path, b"{nope\n"),
            "unknown_op": _raw_request(socket_path, b'{"op":"fly"}\n'),
            "bad_type": _raw_request(socket_path, b'{"op":"load","path":5}\n'),
            "relative": _raw_request(socket_path, b'{"op":"load","path":"rel/model.pt"}\n'),
            "too_long": _raw_request(socket_path,
                                     b'{"op":"ping","pad":"' + b"x" * 70_000 + b'"}\n'),
            "too_many_fds": _raw_request(socket_path, b'{"op":"load","fd":true}\n', nulls),
        }
    finally:
        for fd in nulls:
            os.close(fd)


def act_shm_load_release(state, socket_path, path, release=True):
    with MUClient(socket_path, 30) as c:
        reply = c.request({"op": "load", "path": str(path), "transport": "shm"})
        if release:
            return reply_code(c.request({"op": "release", "shm_name": reply["shm_name"]},
                                        check=False))
    return reply["shm_name"]


def act_release(state, socket_path, name):
    with MUClient(socket_path, 10) as c:
        return reply_code(c.request({"op": "release", "shm_name": name}, check=False))


def act_send_hold(state, socket_path, message):
    c = MUClient(socket_path, 30)
    c.send(message)
    state.setdefault("held", []).append(c)
    return True


def act_drop_held(state):
    for c in state.pop("held", []):
        c.close()
    return True


def act_inline_then_leave(state, socket_path, path, read_bytes):
    c = MUClient(socket_path, 30)
    try:
        c.send({"op": "load", "path": str(path), "transport": "inline"})
        reply = c.read_line()
        got = len(c.buffer)
        while got < read_bytes:
            got += len(c.sock.recv(read_bytes - got))
        return reply.get("size"), got
    finally:
        c.close()


def match(lines, expected):
    """Pairs each expected (ops, result) with one line; returns (missing, extra)."""
    left = list(lines)
    missing = []
    for ops, result in expected:
        for i, line in enumerate(left):
            if line.get("op") in ops and line.get("result") == result:
                del left[i]
                break
        else:
            missing.append((sorted(ops, key=str), result))
    return missing, left


def test_every_request_gets_exactly_one_audit_line_with_its_outcome(ckpts, shared_daemon):
    d = shared_daemon
    d.wait_idle()
    mark = d.log_size()
    with Agent(ATTACKER) as a, Agent(VICTIM) as b:
        bad = a.call(act_bad_requests, d.socket_path, str(CNN))
        too_many = bad.pop("too_many_fds")
        assert set(bad.values()) == {"invalid_request"}, bad
        assert too_many in ("invalid_request", "closed without a reply"), too_many
        # release: ok, and refused for another uid's object
        assert a.call(act_shm_load_release, d.socket_path, CNN) == "ok"
        name = a.call(act_shm_load_release, d.socket_path, CNN, False)
        assert b.call(act_release, d.socket_path, name) == "denied"
        assert a.call(act_release, d.socket_path, name) == "ok"
        # a load cancelled by its client's disconnect
        a.call(act_send_hold, d.socket_path,
               {"op": "load", "path": str(slow_copy(ckpts, "audit-cancel.pkl"))})
        wait_for(lambda: d.stats()["workers_running"] >= 1, 10, 0.01, "the slow load")
        a.call(act_drop_held)
        d.wait_idle()
        # a request that leaves a conversion it had joined (cache on)
        shared = {"op": "load", "path": str(slow_copy(ckpts, "audit-shared.pkl"))}
        a.call(act_send_hold, d.socket_path, shared)
        wait_for(lambda: d.stats()["workers_running"] >= 1, 10, 0.01, "the shared conversion")
        b.call(act_send_hold, d.socket_path, shared)
        time.sleep(0.5)
        b.call(act_drop_held)
        time.sleep(0.3)
        a.call(act_drop_held)
        d.wait_idle()
        # an inline load whose client leaves mid-payload
        size, got = a.call(act_inline_then_leave, d.socket_path, ckpts / "x.pt", 65536)
        assert got < size

    expected_a = [({None}, "invalid_request"),            # invalid JSON
                  ({"fly", None}, "invalid_request"),     # unknown op
                  ({"load", None}, "invalid_request"),    # bad field type
                  ({"load", None}, "invalid_request"),    # relative path
                  ({None}, "invalid_request"),            # line over 64 KiB
                  ({"load", None}, "invalid_request"),    # too many fds
                  ({"load"}, "ok"), ({"release"}, "ok"),
                  ({"load"}, "ok"), ({"release"}, "ok"),
                  ({"load"}, "cancelled"),                # disconnect
                  ({"load"}, "cancelled"),                # left the shared conversion last
                  ({"load"}, "cancelled")]                # inline, left mid-payload
    expected_b = [({"release"}, "denied"),
                  ({"load"}, "cancelled")]                # left a coalesced conversion

    def complete():
        return (len(d.requests(mark, ATTACKER)) >= len(expected_a)
                and len(d.requests(mark, VICTIM)) >= len(expected_b))
    try:
        wait_for(complete, 10, 0.1, "an audit line for every request")
    except AssertionError:
        pass  # reported below, with what is missing
    time.sleep(0.5)
    for uid, expected in ((ATTACKER, expected_a), (VICTIM, expected_b)):
        lines = d.requests(mark, uid)
        for line in lines:
            assert {"event", "uid", "op", "result"} <= set(line), line
        missing, extra = match(lines, expected)
        got = [(line.get("op"), line.get("result")) for line in lines]
        assert not missing and not extra, (
            f"uid {uid}: missing audit lines {missing}; unexpected {extra}; all lines {got}")
