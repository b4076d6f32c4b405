"""Named shared memory between users: the daemon never touches memory a caller
can shrink, leftovers of a killed daemon are swept, and the per-uid quota
cannot be escaped (issue 14 items 2 and 10)."""

import os
import secrets
import signal
import threading
import time

from mu_support import (ATTACKER, BYSTANDER, FIXTURES, VICTIM, Agent, MUClient, MUDaemon,
                        act_load_ok, act_ping, act_request, reply_code)

CNN = FIXTURES / "torch-2.11" / "cnn_state_dict.pt"  # a 14,448-byte image


# ---------------------------------------------------------------- 2. SIGBUS

def act_shm_truncation_race(state, socket_path, path, prefix, seconds, max_loads):
    """Loads with transport shm while a thread truncates every object of ours
    to 0 bytes as soon as it appears."""
    mine = f"{prefix}-{os.getuid()}-"
    stop = threading.Event()
    truncated = [0]

    def truncate_loop():
        while not stop.is_set():
            try:
                names = os.listdir("/dev/shm")
            except OSError:
                continue
            for name in names:
                if name.startswith(mine):
                    try:
                        os.truncate(f"/dev/shm/{name}", 0)
                        truncated[0] += 1
                    except OSError:
                        pass

    thread = threading.Thread(target=truncate_loop, daemon=True)
    thread.start()
    codes = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(codes) < max_loads:
            try:
                with MUClient(socket_path, 15) as c:
                    reply = c.request({"op": "load", "path": str(path), "transport": "shm"},
                                      check=False)
                    codes.append(reply_code(reply))
                    if reply.get("ok"):
                        c.request({"op": "release", "shm_name": reply["shm_name"]}, check=False)
            except (OSError, ValueError) as e:
                codes.append(f"connection: {e!r}")
                time.sleep(0.05)
                if not os.path.exists(socket_path) or len(codes) > 3 and all(
                        c.startswith("connection") for c in codes[-3:]):
                    break
    finally:
        stop.set()
        thread.join(5)
    return codes, truncated[0]


def test_shm_truncated_by_its_owner_does_not_kill_the_daemon(world, ckpts):
    """The attacker truncates its own shm objects while the daemon fills them
    (the object was chown'ed first): the daemon must not die of SIGBUS, and
    another uid's shm load still works."""
    d = MUDaemon(world, "--max-workers", 2, "--cache-bytes", 400_000_000, name="sigbus")
    try:
        d.request({"op": "load", "path": str(ckpts / "big.pt")}, timeout=60)  # cache it
        with Agent(ATTACKER) as attacker:
            codes, truncations = attacker.call(act_shm_truncation_race, d.socket_path,
                                               ckpts / "big.pt", d.shm_prefix, 8, 60, timeout=60)
        time.sleep(0.2)
        assert d.alive(), (f"picklejaild died (exit {d.proc.returncode}, SIGBUS is "
                           f"{-signal.SIGBUS}) after {len(codes)} shm loads, {truncations} "
                           f"truncations: {codes[-5:]}")
        assert truncations > 0, "the race never truncated an object"
        with Agent(BYSTANDER) as bystander:
            latency, reply = bystander.call(act_ping, d.socket_path)
            assert reply.get("ok"), reply
            reply, image = bystander.call(act_load_ok, d.socket_path, CNN, "shm")
    finally:
        d.stop()


# ---------------------------------------------------------------- 10. leftovers and quotas

def act_hold_shm(state, socket_path, path, count):
    names = []
    for _ in range(count):
        with MUClient(socket_path, 30) as c:
            reply = c.request({"op": "load", "path": str(path), "transport": "shm"})
            names.append(reply["shm_name"])
    return names


def test_killed_daemons_shm_objects_are_swept_at_restart(world):
    """SIGKILL leaves shm objects behind; a daemon restarted with the same
    --shm-prefix removes them (and nothing outside its pattern)."""
    d = MUDaemon(world, "--shm-ttl", 600, name="sweep")
    decoy = f"/dev/shm/pjdecoy{secrets.token_hex(4)}-{ATTACKER}-{secrets.token_hex(12)}"
    left = []
    try:
        with Agent(ATTACKER) as a, Agent(VICTIM) as v:
            left += a.call(act_hold_shm, d.socket_path, CNN, 2)
            left += v.call(act_hold_shm, d.socket_path, CNN, 1)
        paths = [f"/dev/shm/{n}" for n in left]
        assert all(os.path.exists(p) for p in paths)
        with open(decoy, "wb") as f:
            f.write(b"not the daemon's")
        d.kill(signal.SIGKILL)
        assert all(os.path.exists(p) for p in paths), "SIGKILL cannot clean up"
        d2 = MUDaemon(world, "--shm-ttl", 600, shm_prefix=d.requested_prefix,
                      socket_dir=d.dir, name="sweep")
        try:
            still = [p for p in paths if os.path.exists(p)]
            assert not still, f"a restarted daemon left its predecessor's objects: {still}"
            assert os.path.exists(decoy), "the sweep removed an object outside its prefix"
            with Agent(ATTACKER) as a:
                a.call(act_load_ok, d2.socket_path, CNN, "shm")
        finally:
            d2.stop()
    finally:
        d.stop()
        for p in [f"/dev/shm/{n}" for n in left] + [decoy]:
            try:
                os.unlink(p)
            except OSError:
                pass


def act_rename_and_release(state, socket_path, path, hidden):
    with MUClient(socket_path, 30) as c:
        reply = c.request({"op": "load", "path": str(path), "transport": "shm"})
        os.rename(reply["shm_path"], hidden)
        size_before = os.stat(hidden).st_size
        released = c.request({"op": "release", "shm_name": reply["shm_name"]}, check=False)
    return reply["size"], size_before, released


def act_shm_fill_quota(state, socket_path, path):
    with MUClient(socket_path, 30) as c:
        first = c.request({"op": "load", "path": str(path), "transport": "shm"}, check=False)
        second = c.request({"op": "load", "path": str(path), "transport": "shm"}, check=False)
        if first.get("ok"):
            c.request({"op": "release", "shm_name": first["shm_name"]}, check=False)
        if second.get("ok"):
            c.request({"op": "release", "shm_name": second["shm_name"]}, check=False)
    return reply_code(first), reply_code(second)


def test_renamed_shm_object_is_emptied_on_release_and_quota_holds(world):
    """Renaming one's own object and releasing it must not keep the bytes while
    freeing the quota: the renamed file is truncated to 0. The per-uid quota
    still answers busy for its owner while another uid's shm loads succeed."""
    d = MUDaemon(world, "--max-shm-bytes-per-uid", 20_000, "--shm-ttl", 600, name="rename")
    hidden = f"/dev/shm/hidden-{ATTACKER}-{secrets.token_hex(6)}"
    try:
        with Agent(ATTACKER) as a, Agent(BYSTANDER) as b:
            size, size_before, released = a.call(act_rename_and_release, d.socket_path, CNN,
                                                 hidden)
            assert size_before == size
            assert os.stat(hidden).st_size == 0, (
                f"after release the renamed object still holds {os.stat(hidden).st_size} bytes "
                f"(release said {released}): the quota was freed, the memory was not")
            # The quota: one 14 KB image fits in 20,000 bytes, two do not.
            first, second = a.call(act_shm_fill_quota, d.socket_path, CNN)
            assert (first, second) == ("ok", "busy")
            # Holding the attacker's quota full must not touch another uid's.
            held = a.call(act_hold_shm, d.socket_path, CNN, 1)
            reply, _ = a.call(act_request, d.socket_path,
                              {"op": "load", "path": str(CNN), "transport": "shm"})
            assert reply_code(reply) == "busy", reply
            b.call(act_load_ok, d.socket_path, CNN, "shm")
            b.call(act_load_ok, d.socket_path, CNN, "shm")
            reply, _ = b.call(act_request, d.socket_path,
                              {"op": "release", "shm_name": held[0]})
            assert reply_code(reply) == "denied", reply
    finally:
        d.stop()
        try:
            os.unlink(hidden)
        except OSError:
            pass
