"""Fair scheduling between uids, and queueing instead of refusal (issue 14 item 7)."""

import os
import secrets
import select
import time

from mu_support import (ATTACKER, BYSTANDER, FIXTURES, SLOW_CONFIG, Agent, MUClient, MUDaemon,
                        median, one_request, percentile, reply_code)

PARAMS = FIXTURES / "torch-2.11" / "params.pt"


def act_latencies(state, socket_path, path, count, timeout=20, budget=None):
    """`count` loads one after another (fewer if `budget` seconds run out)."""
    out = []
    end = None if budget is None else time.monotonic() + budget
    for _ in range(count):
        if end is not None and time.monotonic() > end:
            break
        start = time.monotonic()
        reply, _ = one_request(socket_path, {"op": "load", "path": str(path)}, timeout=timeout,
                               read_image=False)
        out.append((time.monotonic() - start, reply_code(reply)))
    return out


def act_keep_in_flight(state, socket_path, path, count, stop_file, max_seconds):
    """`count` loads always in flight (each connection asks again as soon as its
    reply arrives) until `stop_file` exists."""
    message = {"op": "load", "path": str(path)}
    conns = []
    for _ in range(count):
        c = MUClient(socket_path, 30)
        c.send(message)
        conns.append(c)
    codes = {}
    deadline = time.monotonic() + max_seconds
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        ready, _, _ = select.select([c.sock for c in conns], [], [], 0.05)
        for s in ready:
            c = next(c for c in conns if c.sock is s)
            try:
                c._fill()
            except OSError as e:
                codes[repr(e)] = codes.get(repr(e), 0) + 1
                conns.remove(c)
                continue
            while b"\n" in c.buffer:
                reply = c.read_line()
                code = reply_code(reply)
                codes[code] = codes.get(code, 0) + 1
                for fd in c.fds:
                    os.close(fd)
                c.fds = []
                c.send(message)
    for c in conns:
        c.close()
    return codes


def test_small_load_waits_at_most_about_one_large_job(world, ckpts):
    """--max-workers 2: uid A keeps 8 large loads in flight; uid B's small loads
    wait about one large job at most (p50 <= 1.5 x the large job + 0.3 s), not
    behind A's whole queue, and are never refused."""
    # large.pt has more objects than the default max_objects allows.
    d = MUDaemon(world, "--max-workers", 2, config=SLOW_CONFIG, name="fair")
    stop_file = world / f"stop-{secrets.token_hex(4)}"
    try:
        large = ckpts / "large.pt"
        with Agent(ATTACKER) as a, Agent(BYSTANDER) as b:
            alone = a.call(act_latencies, d.socket_path, large, 3, 30, timeout=120)
            assert all(code == "ok" for _, code in alone), alone
            job = median([t for t, _ in alone])
            idle = b.call(act_latencies, d.socket_path, PARAMS, 3, timeout=30)
            a.start(act_keep_in_flight, d.socket_path, large, 8, str(stop_file), 90)
            time.sleep(max(1.0, 2 * job))  # A's queue is full before B starts
            budget = 10 * (1.5 * job + 0.3) + 5
            measured = b.call(act_latencies, d.socket_path, PARAMS, 10, 20, budget,
                              timeout=budget + 60)
            stop_file.touch()
            a_codes = a.wait(60)
        latencies = [t for t, _ in measured]
        p50 = percentile(latencies, 0.5)
        summary = (f"large job alone {job:.2f} s; B idle p50 {median([t for t, _ in idle]):.3f} s; "
                   f"B under load p50 {p50:.2f} s, max {max(latencies):.2f} s; A: {a_codes}")
        assert all(code == "ok" for _, code in measured), f"B was refused: {measured}"
        assert job >= 0.15, f"the large job is too quick to judge fairness: {summary}"
        assert a_codes.get("ok", 0) >= 8, summary
        assert p50 <= 1.5 * job + 0.3, f"B waited behind A's queue: {summary}"
        assert len(measured) == 10, f"B's 10 loads did not fit in {budget:.0f} s: {summary}"
    finally:
        stop_file.touch()
        d.stop()


def act_concurrent(state, socket_path, path, count):
    conns = []
    for i in range(count):
        c = MUClient(socket_path, 60)
        c.send({"op": "load", "path": str(path), "id": i})
        conns.append(c)
    codes = []
    for c in conns:
        try:
            codes.append(reply_code(c.read_line()))
        except OSError as e:
            codes.append(repr(e))
        finally:
            c.close()
    return codes


def test_sixteen_concurrent_loads_from_one_uid_all_succeed(world, ckpts):
    """A 16-rank job loading at once from one uid: with the default limits every
    load queues and succeeds; none is answered busy."""
    d = MUDaemon(world, name="sixteen")
    try:
        with Agent(ATTACKER) as a:
            codes = a.call(act_concurrent, d.socket_path, ckpts / "x.pt", 16, timeout=120)
        assert codes == ["ok"] * 16, codes
        limits = d.stats()["limits"]
        assert limits["max_requests_per_uid"] >= 16, limits
    finally:
        d.stop()
