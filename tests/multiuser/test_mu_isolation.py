"""Cross-user reads: a path is resolved only as its caller could resolve it.

Issue 14 item 1: paths such as /proc/self/fd/N were resolved inside the daemon,
so they named the daemon's own descriptors, among them the files and memfds of
other users' requests waiting in the queue.
"""

import contextlib
import os
import secrets
import shutil
import threading
import time

from mu_support import (ATTACKER, BYSTANDER, SLOW_CONFIG, THIRD, VICTIM, Agent, MUClient,
                        MUDaemon, act_ping, fd_targets, image_from_memfd, reply_code, wait_for)

MARKER = b"\x5a" * 256  # the victim's tensor bytes
SECRET_NAME = "victim_secret"


def owned_dir(parent, name, uid, mode):
    path = parent / f"{name}-{secrets.token_hex(4)}"
    path.mkdir()
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def owned_copy(src, dst, uid, mode):
    shutil.copyfile(src, dst)
    os.chown(dst, uid, uid)
    dst.chmod(mode)
    return dst


# ---------------------------------------------------------------- actions (run as a uid)

def act_start_slow(state, socket_path, path):
    c = MUClient(socket_path, 60)
    c.send({"op": "load", "path": str(path)})
    state.setdefault("clients", []).append(c)
    return True


def act_close_clients(state):
    for c in state.pop("clients", []):
        c.close()
    return True


def act_victim_enqueue(state, socket_path, secret_path):
    """Three requests that wait in the queue, each leaving an fd in the daemon:
    by path (a file behind a 0700 directory), by fd of that file, and by fd of a
    memfd holding the same bytes (what the Python client sends for a BytesIO)."""
    by_path = MUClient(socket_path, 60)
    by_path.send({"op": "load", "path": str(secret_path), "id": "by-path"})
    by_fd = MUClient(socket_path, 60)
    with open(secret_path, "rb") as f:
        by_fd.send({"op": "load", "fd": True, "id": "by-fd"}, fd=f.fileno())
        data = f.read()
    memfd = os.memfd_create("victim-bytesio", os.MFD_CLOEXEC)
    os.write(memfd, data)
    os.lseek(memfd, 0, os.SEEK_SET)
    by_memfd = MUClient(socket_path, 60)
    by_memfd.send({"op": "load", "fd": True, "id": "by-memfd"}, fd=memfd)
    os.close(memfd)
    state["victim"] = [by_path, by_fd, by_memfd]
    return True


def act_victim_collect(state, timeout):
    out = []
    for c in state.pop("victim"):
        c.sock.settimeout(timeout)
        try:
            reply = c.read_line()
            image = image_from_memfd(c.take_fd(), reply["size"]) if reply.get("ok") else b""
            out.append((reply.get("id"), reply_code(reply), MARKER in image))
        except (OSError, ValueError) as e:
            out.append(("?", repr(e), False))
        finally:
            c.close()
    return out


def act_make_links(state, directory, targets):
    """Symlinks in the attacker's own directory: name -> target."""
    for name, target in targets.items():
        os.symlink(target, os.path.join(directory, name))
    return True


def _judge(message, reply, image):
    text = repr(reply)
    return {"path": message["path"], "op": message["op"], "code": reply_code(reply),
            "leaked_names": SECRET_NAME in text,
            "leaked_bytes": bool(image) and MARKER in image,
            "reply": text[:300]}


def act_attack_paths(state, socket_path, messages, batch=24, timeout=15):
    """Every message on its own connection, `batch` at a time; waits for all replies."""
    results = []
    for start in range(0, len(messages), batch):
        group = messages[start:start + batch]
        clients = []
        for message in group:
            c = MUClient(socket_path, timeout)
            try:
                c.send(message)
            except OSError:
                pass
            clients.append(c)
        deadline = time.monotonic() + timeout
        for message, c in zip(group, clients):
            reply, image = None, None
            try:
                c.sock.settimeout(max(0.1, deadline - time.monotonic()))
                reply = c.read_line()
                if reply.get("ok") and message["op"] == "load":
                    image = image_from_memfd(c.take_fd(), reply["size"])
            except (OSError, ValueError) as e:
                reply = {"ok": False, "error": {"code": "no_reply", "message": repr(e)}}
            finally:
                c.close()
            results.append(_judge(message, reply, image))
        time.sleep(0.2)  # let the daemon see these connections close
    return results


# ---------------------------------------------------------------- 1. magic links

def test_magic_links_never_reach_another_users_queued_fds(world, ckpts):
    """While a victim's three requests wait in the queue (by path, by fd, by memfd),
    the attacker names the daemon's descriptors through every magic-link form:
    never ok, always denied (or io_error), no victim bytes or names, audit not ok."""
    d = MUDaemon(world, "--max-workers", 1, config=SLOW_CONFIG, name="magic")
    vdir = owned_dir(world, "victim-home", VICTIM, 0o700)
    secret = owned_copy(ckpts / "victim.pt", vdir / "model.pt", VICTIM, 0o644)
    adir = owned_dir(world, "attacker-home", ATTACKER, 0o755)
    try:
        with Agent(THIRD) as blocker, Agent(VICTIM) as victim, Agent(ATTACKER) as attacker:
            # Keep the only worker busy so the victim's requests wait, holding fds.
            blocker.call(act_start_slow, d.socket_path, ckpts / "slow.pkl")
            wait_for(lambda: d.stats()["workers_running"] >= 1, 10, message="the slow job")
            victim.call(act_victim_enqueue, d.socket_path, secret)

            def victim_fds():
                return sorted(n for n, t in fd_targets(d.pid).items()
                              if t == str(secret) or "victim-bytesio" in t)
            try:
                wait_for(lambda: len(victim_fds()) >= 3, 3, message="the victim's fds")
            except AssertionError:
                pass  # a daemon may hold no fd while a request waits: brute force still runs
            found = victim_fds()
            targets = sorted(set(found) | {2})  # 2: the daemon's stderr, the audit log
            links = {}
            for n in targets:
                links[f"self-{n}"] = f"/proc/self/fd/{n}"
                links[f"pid-{n}"] = f"/proc/{d.pid}/fd/{n}"
            attacker.call(act_make_links, str(adir), links)
            forms = ["/proc/self/fd/{n}", "/dev/fd/{n}", "/proc/thread-self/fd/{n}",
                     f"/proc/{d.pid}/fd/{{n}}", str(adir) + "/self-{n}", str(adir) + "/pid-{n}"]
            messages = []
            for n in found or targets:
                for op in ("inspect", "load"):
                    for form in forms:
                        messages.append({"op": op, "path": form.format(n=n)})
            for n in range(0, 48):
                for form in ("/proc/self/fd/{n}", "/dev/fd/{n}"):
                    message = {"op": "inspect", "path": form.format(n=n)}
                    if message not in messages:
                        messages.append(message)
            log_mark = d.log_size()
            results = attacker.call(act_attack_paths, d.socket_path, messages, timeout=20)
            blocker.call(act_close_clients)  # cancels the slow job
            victims = victim.call(act_victim_collect, 30, timeout=40)

        leaks = [(r["op"], r["path"], "names" if r["leaked_names"] else "bytes")
                 for r in results if r["leaked_names"] or r["leaked_bytes"]]
        assert not leaks, (f"{len(leaks)} replies gave the attacker (uid {ATTACKER}) the "
                           f"victim's tensors through the daemon's fds {found}: {leaks}")
        wrong = [r for r in results if r["code"] not in ("denied", "io_error")]
        assert not wrong, f"{len(wrong)} magic-link requests not refused: {wrong[:6]}"
        time.sleep(0.3)
        lines = d.requests(log_mark, uid=ATTACKER)
        assert not [e for e in lines if e.get("result") == "ok"], \
            "the audit log says ok for a magic-link request"
        assert len(lines) == len(messages), \
            f"{len(lines)} audit lines for the attacker's {len(messages)} requests"
        # The victim itself was served throughout.
        assert [v[1:] for v in victims] == [("ok", True)] * 3, victims
        assert d.alive()
    finally:
        d.stop()


# ---------------------------------------------------------------- symlink races

def act_symlink_race(state, socket_path, link, own, other, rounds):
    stop = threading.Event()

    def flip():
        tmp = link + ".tmp"
        while not stop.is_set():
            for target in (own, other):
                try:
                    # A leftover tmp (a replace that failed) must not freeze the
                    # link on one target for the rest of the race.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    os.symlink(target, tmp)
                    os.replace(tmp, link)
                except OSError:
                    pass
                time.sleep(0.001)  # let the requesting thread run between flips
    os.symlink(own, link)
    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    results = []
    try:
        for i in range(rounds):
            with MUClient(socket_path, 10) as c:
                reply = c.request({"op": "inspect", "path": link}, check=False)
            results.append((reply_code(reply), SECRET_NAME in repr(reply)))
    finally:
        stop.set()
        flipper.join(5)
    return results


def test_symlink_race_never_reads_a_file_the_caller_cannot(world, ckpts, shared_daemon):
    """Regression guard (the old daemon already opened with the caller's fs
    credentials): a symlink flipped between the attacker's own file and a
    victim's 0600 file never yields the victim's file."""
    vdir = owned_dir(world, "victim-pub", VICTIM, 0o755)
    secret = owned_copy(ckpts / "victim.pt", vdir / "secret.pt", VICTIM, 0o600)
    adir = owned_dir(world, "attacker-race", ATTACKER, 0o755)
    own = owned_copy(ckpts / "attacker.pt", adir / "own.pt", ATTACKER, 0o644)
    with Agent(ATTACKER) as attacker:
        results = attacker.call(act_symlink_race, shared_daemon.socket_path,
                                str(adir / "link.pt"), str(own), str(secret), 60, timeout=90)
    assert not [r for r in results if r[1]], "the victim's tensor names came back"
    codes = {r[0] for r in results}
    assert codes <= {"ok", "denied", "io_error"}, codes
    assert "ok" in codes  # the race really ran against the attacker's own file too


# ---------------------------------------------------------------- special files

def act_special_paths(state, socket_path, paths):
    out = []
    for path in paths:
        start = time.monotonic()
        with MUClient(socket_path, 5) as c:
            try:
                reply = c.request({"op": "load", "path": path}, check=False)
                code = reply_code(reply)
            except OSError as e:
                code = f"no reply: {e!r}"
        out.append((path, code, time.monotonic() - start))
    return out


def test_fifo_device_and_directory_paths_are_refused_fast(world, shared_daemon):
    """Regression guard: a FIFO nobody writes to, /dev/zero, a directory and a
    socket are refused at once (io_error/denied) and never stall another user."""
    adir = owned_dir(world, "attacker-special", ATTACKER, 0o755)
    fifo = adir / "fifo.pt"
    os.mkfifo(fifo)
    os.chown(fifo, ATTACKER, ATTACKER)
    paths = [str(fifo), "/dev/zero", "/dev/urandom", str(adir), shared_daemon.socket_path]
    with Agent(ATTACKER) as attacker, Agent(BYSTANDER) as bystander:
        attacker.start(act_special_paths, shared_daemon.socket_path, paths)
        latency, reply = bystander.call(act_ping, shared_daemon.socket_path)
        results = attacker.wait(30)
    assert latency < 1.0, (latency, reply)
    for path, code, seconds in results:
        assert code in ("io_error", "denied"), (path, code)
        assert seconds < 2.0, (path, seconds)
