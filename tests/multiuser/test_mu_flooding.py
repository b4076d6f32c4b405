"""One user exhausting what the daemon shares: fds, connections, reply memory,
time on the event loop (issue 14 items 3, 4 and 8). Another uid is served
throughout."""

import json
import os
import selectors
import socket
import time

from mu_support import (ATTACKER, BYSTANDER, FIXTURES, MiB, Agent, MUClient, MUDaemon,
                        act_close_all, act_load_ok, act_ping, percentile, reply_code,
                        timed_ping, wait_for)

PARAMS = FIXTURES / "torch-2.11" / "params.pt"
CNN = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"


def bystander_service(socket_path, pings=5):
    """Run as another uid: pings and one small load; returns (max ping s, load code)."""
    with Agent(BYSTANDER) as b:
        latencies = [b.call(act_ping, socket_path, 5)[0] for _ in range(pings)]
        try:
            reply, _ = b.call(act_load_ok, socket_path, PARAMS, "memfd", 10, timeout=20)
            code = reply_code(reply)
        except AssertionError as e:
            code = str(e)[-300:]
    return max(latencies), code


# ---------------------------------------------------------------- 3. fd flood

def act_fd_flood(state, socket_path, messages, seconds):
    """One connection: one-byte messages, each carrying an fd, never a newline."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(socket_path)
    null = os.open("/dev/null", os.O_RDONLY)
    sent, outcome = 0, "sent everything"
    deadline = time.monotonic() + seconds
    try:
        while sent < messages and time.monotonic() < deadline:
            socket.send_fds(s, [b"x"], [null])
            sent += 1
    except (BrokenPipeError, ConnectionResetError) as e:
        outcome = f"closed by the daemon: {e!r}"
    except socket.timeout:
        outcome = "send blocked (the daemon stopped reading)"
    if outcome.startswith("sent") or outcome.startswith("send blocked"):
        # Did the daemon hang up (with or without an error line)?
        try:
            s.settimeout(3)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    outcome = f"closed by the daemon after {data[:200]!r}"
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError) as e:
            if isinstance(e, ConnectionResetError):
                outcome = "closed by the daemon (reset)"
    os.close(null)
    state.setdefault("socks", []).append(s)  # held open until the harness says so
    return sent, outcome


def test_fd_flood_is_cut_off(world):
    """A connection sending one-byte messages each with an fd, never a newline:
    the daemon closes it early, its fd table stays small, other users are served
    at once and the daemon does not spin. (RLIMIT_NOFILE 4096, as a service
    manager may set it, so the old daemon's table actually fills.)"""
    d = MUDaemon(world, name="fdflood", nofile=4096)
    try:
        start_fds = d.settled_fd_count()
        with Agent(ATTACKER) as attacker:
            attacker.start(act_fd_flood, d.socket_path, 6000, 8)
            peak = start_fds
            deadline = time.monotonic() + 15
            while True:
                try:
                    peak = max(peak, d.fd_count())
                except FileNotFoundError:  # the daemon died
                    sent, outcome = attacker.wait(15)
                    break
                try:
                    sent, outcome = attacker.poll(0.01)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        sent, outcome = attacker.wait(5)
                        break
            if d.alive():
                peak = max(peak, d.fd_count())
            ping_latency, ping_reply = attacker_free_ping(d.socket_path)
            # CPU while another connection is pending: a loop spinning on EMFILE shows here.
            assert d.alive(), f"picklejaild died: exit {d.proc.returncode}"
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2)
            try:
                probe.connect(d.socket_path)
            except OSError:
                pass
            before = d.cpu()
            time.sleep(1.0)
            spent = d.cpu() - before
            probe.close()
            attacker.call(act_close_all)
        assert d.alive()
        assert peak <= start_fds + 200, (f"the daemon's fd table grew from {start_fds} to {peak} "
                                         f"({sent} fds sent; {outcome})")
        assert outcome.startswith("closed by the daemon") and sent < 6000, \
            f"the flooding connection was not closed early: {sent} sent, {outcome}"
        assert ping_latency < 1.0, f"another uid's ping took {ping_latency:.2f} s: {ping_reply}"
        assert spent < 0.3, f"the daemon used {spent:.2f} s of CPU in 1 s while idle"
    finally:
        d.stop()


def attacker_free_ping(socket_path):
    with Agent(BYSTANDER) as b:
        return b.call(act_ping, socket_path, 3)


# ---------------------------------------------------------------- 4. connection flood

def act_connection_flood(state, socket_path, count, payload, watch_seconds):
    """`count` connections, each sending `payload` (half a line, or nothing); then
    watches them all: what each received and when it was closed."""
    conns = []
    refused = 0
    for i in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(socket_path)
        except OSError:
            refused += 1
            s.close()
            continue
        sent_at = time.monotonic()
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass
        s.setblocking(False)
        conns.append({"sock": s, "sent_at": sent_at, "data": b"", "eof_at": None})
    state["flood"] = conns
    return refused, len(conns)


def act_watch_flood(state, seconds):
    conns = state["flood"]
    sel = selectors.DefaultSelector()
    for i, c in enumerate(conns):
        sel.register(c["sock"], selectors.EVENT_READ, i)
    deadline = time.monotonic() + seconds
    open_count = len(conns)
    while open_count and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            c = conns[key.data]
            try:
                chunk = c["sock"].recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if chunk:
                c["data"] += chunk
                continue
            c["eof_at"] = time.monotonic()
            sel.unregister(c["sock"])
            open_count -= 1
    sel.close()
    out = []
    for c in conns:
        first = c["data"].split(b"\n", 1)[0]
        try:
            code = reply_code(json.loads(first)) if first else None
        except ValueError:
            code = "garbage"
        out.append({"code": code,
                    "closed_after": None if c["eof_at"] is None else c["eof_at"] - c["sent_at"]})
    return out


def test_connection_flood_is_capped_per_uid_and_half_lines_time_out(world):
    """1,100 connections from one uid, each holding half a line: those beyond the
    per-uid cap (64) get busy, another uid is served meanwhile, and the daemon
    closes the half-line connections after --line-timeout (2 s)."""
    d = MUDaemon(world, "--max-connections-per-uid", 64, "--line-timeout", 2, name="connflood")
    try:
        start_fds = d.settled_fd_count()
        with Agent(ATTACKER) as attacker:
            refused, opened = attacker.call(act_connection_flood, d.socket_path, 1100,
                                            b'{"op":"ping","pad":"', 0, timeout=60)
            attacker.start(act_watch_flood, 7)
            worst_ping, load_code = bystander_service(d.socket_path)
            outcomes = attacker.wait(30)
            attacker.call(act_close_all)
        busy = [o for o in outcomes if o["code"] == "busy"]
        held = [o for o in outcomes if o["code"] != "busy"]
        assert worst_ping < 1.0 and load_code == "ok", \
            f"another uid was not served during the flood: ping {worst_ping:.2f} s, load {load_code}"
        assert len(busy) + refused >= 1100 - 64 - 2, \
            f"only {len(busy)} of 1,100 connections got busy ({refused} refused outright)"
        assert len(held) <= 64, f"{len(held)} connections of one uid were accepted"
        late = [o for o in held if o["closed_after"] is None or o["closed_after"] > 6.0]
        assert not late, (f"{len(late)} half-line connections still open 6 s after their "
                          f"half line (--line-timeout 2): {late[:3]}")
        early = [o for o in held if o["closed_after"] < 1.0]
        assert not early, f"half-line connections closed before the line timeout: {early[:3]}"
        assert {o["code"] for o in held} <= {None, "timeout"}, {o["code"] for o in held}
        time.sleep(0.3)
        assert d.settled_fd_count() <= start_fds + 2
    finally:
        d.stop()


def test_idle_connections_are_capped_per_uid(world, shared_daemon):
    """Connections that never send a byte count against their uid's connection cap
    too: beyond 64 they get busy, and another uid is served meanwhile."""
    with Agent(ATTACKER) as attacker:
        refused, opened = attacker.call(act_connection_flood, shared_daemon.socket_path, 200,
                                        b"", 0, timeout=60)
        attacker.start(act_watch_flood, 1.5)
        worst_ping, load_code = bystander_service(shared_daemon.socket_path, pings=3)
        outcomes = attacker.wait(30)
        attacker.call(act_close_all)
    busy = [o for o in outcomes if o["code"] == "busy"]
    assert worst_ping < 1.0 and load_code == "ok", (worst_ping, load_code)
    assert len(busy) + refused >= 200 - 64 - 2, \
        f"only {len(busy)} of 200 idle connections from one uid got busy"


# ---------------------------------------------------------------- 8. heavy replies

def act_unread_requests(state, socket_path, message, count):
    socks = state.setdefault("socks", [])
    line = json.dumps(message).encode() + b"\n"
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(socket_path)
        s.sendall(line)
        socks.append(s)
    return len(socks)


def act_ping_series(state, socket_path, seconds, interval=0.05):
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        latencies.append(timed_ping(socket_path, 5)[0])
        time.sleep(interval)
    return latencies


def test_unread_heavy_replies_do_not_stall_others_or_grow_memory(world, ckpts, shared_daemon):
    """40 inspects of a file with 20,000 tensors (a ~2 MB listing each, the image
    cached so every one is answered at once), on 40 connections never read:
    another uid's pings stay fast (max < 1 s: the listings are not built on the
    event loop) and the daemon's settled RSS grows < 150 MB."""
    d = shared_daemon
    wide = ckpts / "wide.pt"
    reply = d.request({"op": "inspect", "path": str(wide)}, timeout=60)  # convert once (cached)
    assert reply.get("ok"), reply
    listing = len(json.dumps(reply))
    assert listing > 1_500_000, f"the inspect listing is only {listing} bytes"
    d.wait_idle()
    rss0 = d.rss()
    with Agent(ATTACKER) as attacker, Agent(BYSTANDER) as bystander:
        bystander.start(act_ping_series, d.socket_path, 5.0)
        attacker.call(act_unread_requests, d.socket_path,
                      {"op": "inspect", "path": str(wide)}, 40)
        samples = []
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            samples.append((time.monotonic(), d.rss()))
            time.sleep(0.1)
        latencies = bystander.wait(30)
        settled = [rss for t, rss in samples if t > end - 1.0]
        attacker.call(act_close_all)
    peak = max(rss for _, rss in samples)
    growth = sorted(settled)[len(settled) // 2] - rss0
    assert d.alive()
    problems = []
    if max(latencies) >= 1.0:
        problems.append(f"another uid's ping took up to {max(latencies):.2f} s "
                        f"(p50 {percentile(latencies, 0.5):.3f} s; inf: no reply in 5 s)")
    if growth >= 150 * MiB:
        problems.append(f"RSS grew by {growth / MiB:.0f} MiB holding unread replies "
                        f"(peak +{(peak - rss0) / MiB:.0f} MiB)")
    assert not problems, "; ".join(problems)


def act_inline_one_by_one(state, socket_path, path, count, wait_s):
    """Sends inline loads one at a time, each on its own connection, never reading;
    returns, for each, whether its reply started within `wait_s`."""
    import select
    socks = state.setdefault("inline", [])
    started = []
    for i in range(count):
        c = MUClient(socket_path, 10)
        c.send({"op": "load", "path": str(path), "transport": "inline", "id": i})
        socks.append(c)
        ready, _, _ = select.select([c.sock], [], [], wait_s)
        started.append(bool(ready))
    return started


def act_inline_drain(state, timeout):
    """Reads every reply in full, round robin; returns (code, complete) per request."""
    import select
    socks = state.pop("inline")
    out = [None] * len(socks)
    heads = [b""] * len(socks)
    payload_left = [None] * len(socks)
    deadline = time.monotonic() + timeout
    pending = set(range(len(socks)))
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select([socks[i].sock for i in pending], [], [], 0.1)
        for s in ready:
            i = next(j for j in pending if socks[j].sock is s)
            try:
                data = s.recv(1 << 20)
            except OSError as e:
                out[i] = (f"closed: {e!r}", False)
                pending.discard(i)
                continue
            if not data:
                out[i] = ("eof before the whole reply", False)
                pending.discard(i)
                continue
            if payload_left[i] is None:
                heads[i] += data
                if b"\n" not in heads[i]:
                    continue
                line, rest = heads[i].split(b"\n", 1)
                reply = json.loads(line)
                if not reply.get("ok"):
                    out[i] = (reply_code(reply), False)
                    pending.discard(i)
                    continue
                payload_left[i] = reply["size"]
                data = rest
            payload_left[i] -= len(data)
            if payload_left[i] <= 0:
                out[i] = ("ok", payload_left[i] == 0)
                pending.discard(i)
    for c in socks:
        c.close()
    return out


def test_reply_bytes_per_uid_make_further_requests_wait(world, ckpts):
    """--max-reply-bytes-per-uid 12 MiB: inline loads of an 8 MiB image sent one
    after another and never read. Once the uid's unread replies pass the limit,
    its further requests wait (their replies do not start; none is refused), and
    all complete once the client reads."""
    d = MUDaemon(world, "--max-reply-bytes-per-uid", 12 * MiB, "--cache-bytes", 100_000_000,
                 name="replyquota")
    try:
        d.request({"op": "load", "path": str(ckpts / "x.pt")}, timeout=30)  # cache it
        with Agent(ATTACKER) as a:
            started = a.call(act_inline_one_by_one, d.socket_path, ckpts / "x.pt", 6, 1.0,
                             timeout=30)
            results = a.call(act_inline_drain, 20, timeout=40)
        assert started[0], "the first reply never started"
        assert started.count(True) <= 3, \
            f"{started.count(True)} of 6 unread 8 MiB replies were queued at once: {started}"
        assert results == [("ok", True)] * 6, results
    finally:
        d.stop()


def act_slow_reader(state, socket_path, path, wait_s):
    c = MUClient(socket_path, 10)
    c.send({"op": "load", "path": str(path), "transport": "inline"})
    time.sleep(wait_s)
    got = 0
    c.sock.settimeout(3)
    size = None
    try:
        while True:
            data = c.sock.recv(1 << 20)
            if not data:
                return "eof", got, size
            got += len(data)
            if size is None and b"\n" in data:
                size = json.loads(data.split(b"\n", 1)[0]).get("size")
    except socket.timeout:
        return "still open", got, size
    except OSError as e:
        return f"reset {e!r}", got, size
    finally:
        c.close()


def test_reply_left_unread_past_write_timeout_closes_the_connection(world, ckpts):
    """--write-timeout 2: an inline reply left unread for 4 s is abandoned and the
    connection closed (the client then reads only part of it, then EOF); the
    audit line does not say ok."""
    d = MUDaemon(world, "--write-timeout", 2, name="writetimeout")
    try:
        mark = d.log_size()
        with Agent(ATTACKER) as a:
            how, got, size = a.call(act_slow_reader, d.socket_path, ckpts / "x.pt", 4.0,
                                    timeout=30)
        assert how in ("eof",) or how.startswith("reset"), \
            f"after 4 s unread the connection was {how} ({got} bytes read)"
        assert size is None or got < size, "the whole reply was delivered"
        lines = wait_for(lambda: d.requests(mark, uid=ATTACKER), 5, message="the audit line")
        assert [e["result"] for e in lines] != ["ok"], lines
    finally:
        d.stop()


def test_unread_memfd_replies_hold_no_daemon_fds(world, ckpts, shared_daemon):
    """Regression guard: memfd replies a client never reads leave no fd in the
    daemon (the image went with the reply), and another uid is served."""
    d = shared_daemon
    start = d.settled_fd_count()
    with Agent(ATTACKER) as a:
        a.call(act_unread_requests, d.socket_path,
               {"op": "load", "path": str(ckpts / "x.pt"), "transport": "memfd"}, 30)
        time.sleep(1.5)
        during = d.fd_count()
        worst_ping, load_code = bystander_service(d.socket_path, pings=3)
        a.call(act_close_all)
    assert worst_ping < 1.0 and load_code == "ok"
    assert during <= start + 30 + 8, f"{during - start} more fds with 30 unread memfd replies"
    time.sleep(0.5)
    assert d.settled_fd_count() <= start + 2
