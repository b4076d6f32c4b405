#!/usr/bin/python3
"""Checks picklejail.service under a real systemd (PID 1 of a container booted
by scripts/systemd-test), after `systemd-sysusers` and `systemctl enable
picklejail.socket`. Every check reads what is in force (systemd's state, /proc,
cgroup files, the journal), never the unit text, and prints what it found.
Exit status 1 when any check failed.

Run as root inside the container: python3 check_service.py FIXTURE
"""

import json
import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pj_client
from pj_client import Connection, load_file

SERVICE = "picklejail.service"
SOCKET_UNIT = "picklejail.socket"
CONFIG = Path("/etc/picklejail/picklejaild.json")
SCRATCH = Path("/var/tmp/picklejail-checks")
USER = "pjcheck"  # an ordinary user, made here

# The unit's CapabilityBoundingSet, as capability numbers (linux/capability.h).
BOUNDING_CAPS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
                 "CAP_SETPCAP": 8, "CAP_SYS_ADMIN": 21}
MEMORY_MAX = 32 * 1024**3
TASKS_MAX = 512
NOFILE = 65536


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def run(*argv, check=True, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {result.returncode}: "
                          f"{(result.stderr or result.stdout).strip()[-400:]}")
    return result


def show(unit, *properties):
    out = run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out waiting for {what}")
        time.sleep(0.02)


def main_pid():
    pid = int(show(SERVICE, "MainPID")["MainPID"])
    expect(pid > 0, f"{SERVICE} has no main process")
    return pid


def proc_status(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def children(pid):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces: fields start after the last ')'.
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def journal_lines(unit):
    out = run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout
    return out.splitlines()


def audit_events(unit=SERVICE):
    events = []
    for line in journal_lines(unit):
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return events


def os_system_pickle(command=b"echo pwned"):
    """GLOBAL os.system + REDUCE, written as opcodes (never unpickled)."""
    return (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command +
            b"\x85R.")


def slow_pickle(count):
    """A valid plain pickle that keeps a worker busy for a while: many floats."""
    batch = b"(" + b"".join(b"G" + struct.pack(">d", i + 0.5) for i in range(1000)) + b"e"
    return b"\x80\x02]q\x00" + batch * (count // 1000) + b"."


def start_slow_load(path, transport="memfd"):
    """Sends a slow load and returns its connection once a worker runs it."""
    c = Connection(timeout=120)
    c.send({"op": "load", "path": str(path), "transport": transport})
    with Connection() as probe:
        wait_for(lambda: probe.request({"op": "stats"})["stats"]["workers_running"] > 0,
                 "the slow load's worker to start")
    return c


# ---------------------------------------------------------------- checks

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def socket_activation(ctx):
    before = show(SERVICE, "ActiveState")["ActiveState"]
    sock = show(SOCKET_UNIT, "ActiveState", "SubState")
    expect(before == "inactive", f"{SERVICE} is {before} before any connection")
    expect(sock == {"ActiveState": "active", "SubState": "listening"}, f"{SOCKET_UNIT}: {sock}")
    mode = os.stat(pj_client.SOCKET).st_mode
    expect(stat.S_ISSOCK(mode), f"{pj_client.SOCKET} is not a socket")
    with Connection() as c:
        pong = c.request({"op": "ping"})
    expect(pong.get("ok"), f"ping answered {pong}")
    after = show(SERVICE, "ActiveState")["ActiveState"]
    expect(after == "active", f"{SERVICE} is {after} after the first connection")
    return (f"service {before} and socket listening ({stat.S_IMODE(mode):o}) before; the first "
            f"ping started it (protocol {pong.get('protocol')}), now {after}, pid {main_pid()}")


@check
def notify_readiness(ctx):
    s = show(SERVICE, "Type", "NotifyAccess", "StatusText", "ExecMainStartTimestampMonotonic",
             "ActiveEnterTimestampMonotonic")
    expect(s["Type"] == "notify", f"Type={s['Type']}")
    # STATUS= comes only from the daemon's own sd_notify, sent with READY=1.
    expect(s["StatusText"] == "accepting requests", f"StatusText={s['StatusText']!r}")
    started = int(s["ExecMainStartTimestampMonotonic"])
    active = int(s["ActiveEnterTimestampMonotonic"])
    expect(active >= started > 0, f"active at {active} before the start at {started}")
    return (f"Type=notify, NotifyAccess={s['NotifyAccess']}, status {s['StatusText']!r} from "
            f"the daemon, active {(active - started) / 1000:.1f} ms after exec")


@check
def load_as_root(ctx):
    reply, header = load_file(ctx["fixture"])
    expect(reply.get("ok"), f"load answered {reply}")
    names = [k for k in header if k != "__metadata__"]
    expect(len(names) == reply["tensors"] > 0, f"{len(names)} tensors in the header, "
           f"{reply['tensors']} in the reply")
    return f"{reply['tensors']} tensors, {reply['size']} bytes in a sealed memfd"


@check
def load_as_ordinary_user(ctx):
    user = pwd.getpwnam(USER)
    home = SCRATCH / USER
    home.mkdir(mode=0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    source, output = home / "model.pt", home / "model.safetensors"
    shutil.copyfile(ctx["fixture"], source)
    os.chown(source, user.pw_uid, user.pw_gid)
    source.chmod(0o600)
    result = run("runuser", "-u", USER, "--", "picklejail", "convert", "--json", "--socket",
                 pj_client.SOCKET, str(source), str(output), check=False)
    expect(result.returncode == 0, f"picklejail convert as {USER}: {result.stderr.strip()}")
    expect(output.stat().st_uid == user.pw_uid, "the output is not the user's")
    # The daemon opens paths with the caller's credentials, inside the unit too.
    secret = SCRATCH / "root-only.pt"
    shutil.copyfile(ctx["fixture"], secret)
    secret.chmod(0o600)
    denied = run("runuser", "-u", USER, "--", "python3", pj_client.__file__, "load-path",
                 str(secret), check=False)
    code = json.loads(denied.stdout or "{}").get("error", {}).get("code")
    expect(code == "denied", f"{USER} loading a root-only file by path: {denied.stdout.strip()}")
    ours = [e for e in audit_events() if e.get("uid") == user.pw_uid and e.get("op") == "load"]
    expect({e.get("result") for e in ours} >= {"ok", "denied"},
           f"audit lines for uid {user.pw_uid}: {ours}")
    return (f"uid {user.pw_uid} converted through the socket with the CLI "
            f"({output.stat().st_size} bytes), was denied a root-only file, both audited")


@check
def daemon_hardening(ctx):
    pid = main_pid()
    status = proc_status(pid)
    expect(status["NoNewPrivs"] == "1", f"NoNewPrivs {status['NoNewPrivs']}")
    expect(status["Seccomp"] == "2", f"Seccomp {status['Seccomp']} (2 is a filter)")
    bounding = sum(1 << n for n in BOUNDING_CAPS.values())
    cap = {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    expect(cap["CapBnd"] == bounding, f"CapBnd {cap['CapBnd']:#x}, expected {bounding:#x}")
    expect(cap["CapAmb"] == 0 and cap["CapInh"] == 0, f"ambient/inheritable caps: {cap}")
    expect(cap["CapEff"] & ~bounding == 0, f"CapEff {cap['CapEff']:#x} outside the bounding set")
    expect(status["Umask"] == "0077", f"Umask {status['Umask']}")
    # systemd cannot raise LimitNOFILE= above its own hard limit (a container's).
    ceiling = min(NOFILE, open_files_limit(1))
    nofile = open_files_limit(pid)
    expect(nofile == ceiling, f"open files limit {nofile}, expected {ceiling}")
    found = [f"NoNewPrivs 1, Seccomp 2 ({status.get('Seccomp_filters', '?')} filters)",
             f"CapBnd {cap['CapBnd']:#x} = {'+'.join(sorted(BOUNDING_CAPS))}, CapEff "
             f"{cap['CapEff']:#x}, no ambient",
             f"umask 0077, {nofile} fds (LimitNOFILE={NOFILE}, PID 1's hard limit "
             f"{open_files_limit(1)})"]
    found.append(filesystem_view(pid))
    found.append(network_view(pid))
    found.append(cgroup_limits(pid))
    return "; ".join(found)


def open_files_limit(pid):
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return int(next(line.split()[4] for line in limits if line.startswith("Max open files")))


def write_probe(pid, directory):
    """Creates and removes a file in `directory` as seen from the daemon's
    mount namespace; returns None on success or the error text."""
    probe = f"{directory.rstrip('/')}/.picklejail-write-probe"
    result = run("nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", "sh", "-c",
                 f"touch {probe} && rm -f {probe}", check=False)
    return None if result.returncode == 0 else result.stderr.strip()


def filesystem_view(pid):
    for read_only in ("/usr", "/etc", "/home"):
        error = write_probe(pid, read_only)
        expect(error is not None and "Read-only file system" in error,
               f"{read_only} is writable for the daemon ({error})")
    error = write_probe(pid, "/dev/shm")
    expect(error is None, f"/dev/shm not writable for the daemon: {error}")
    # No file can be made in /proc/sys anyway: its mount must be read-only.
    options = mount_options(pid, "/proc/sys")
    expect("ro" in options, f"/proc/sys mounted {options} for the daemon")
    return "/usr, /etc, /home, /proc/sys read-only in its mount namespace, /dev/shm writable"


def mount_options(pid, mount_point):
    """The per-mount options of the mount at exactly `mount_point` in `pid`'s
    mount namespace (the last one, as it hides those below)."""
    found = None
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            found = fields[5].split(",")
    expect(found is not None, f"no mount at {mount_point} for process {pid}")
    return found


def interfaces(pid):
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def network_view(pid):
    ours = os.readlink("/proc/1/ns/net")
    theirs = os.readlink(f"/proc/{pid}/ns/net")
    expect(theirs != ours, "the daemon shares the host's network namespace")
    expect(interfaces(pid) == ["lo"], f"interfaces {interfaces(pid)}")
    return f"own network namespace with only lo ({theirs})"


def cgroup_file(pid, controller, name_v1, name_v2):
    """The file holding a limit of `pid`'s cgroup, on cgroup v1 (a controller
    hierarchy of its own) or v2 (the unified one)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    if controller in paths:
        return Path(f"/sys/fs/cgroup/{controller}{paths[controller]}/{name_v1}")
    unified = "/sys/fs/cgroup/unified" if Path("/sys/fs/cgroup/unified").is_dir() else \
        "/sys/fs/cgroup"
    return Path(f"{unified}{paths['']}/{name_v2}")


def cgroup_limits(pid):
    memory = cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max")
    tasks = cgroup_file(pid, "pids", "pids.max", "pids.max")
    expect(memory.exists(), f"no memory controller for the service ({memory})")
    expect(tasks.exists(), f"no pids controller for the service ({tasks})")
    expect(int(memory.read_text()) == MEMORY_MAX, f"{memory}: {memory.read_text().strip()}")
    expect(int(tasks.read_text()) == TASKS_MAX, f"{tasks}: {tasks.read_text().strip()}")
    return f"{memory} = {MEMORY_MAX}, {tasks} = {TASKS_MAX}"


def seccomp_filters(pid):
    return int(proc_status(pid).get("Seccomp_filters", "0"))


def confined_worker(daemon):
    """The daemon's picklejail-worker child once it has added its own seccomp
    filter, the last step of its confinement (before it, it may still be root
    and only under the filters it inherited). Other children (the holder of
    the workers' empty network namespace) are not workers."""
    workers = []

    def filtered():
        nonlocal workers
        workers = [pid for pid in children(daemon)
                   if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                   .endswith(b"/picklejail-worker")]
        return len(workers) == 1 and seccomp_filters(workers[0]) > seccomp_filters(daemon)

    wait_for(filtered, f"a worker with its own filter (workers {workers})")
    return workers[0]


@check
def worker_confinement(ctx):
    daemon = main_pid()
    worker_user = pwd.getpwnam("picklejail")
    with start_slow_load(ctx["slow"]) as held:
        pid = confined_worker(daemon)
        status = proc_status(pid)
        uids = status["Uid"].split()
        expect(uids == [str(worker_user.pw_uid)] * 4, f"worker Uid {uids}")
        expect(status["Gid"].split() == [str(worker_user.pw_gid)] * 4, f"Gid {status['Gid']}")
        expect(status["NoNewPrivs"] == "1", f"worker NoNewPrivs {status['NoNewPrivs']}")
        expect(status["Seccomp"] == "2", f"worker Seccomp {status['Seccomp']}")
        for k in ("CapPrm", "CapEff", "CapAmb", "CapInh"):
            expect(int(status[k], 16) == 0, f"worker {k} {status[k]}")
        shared = [ns for ns in ("pid", "mnt", "net", "ipc", "uts")
                  if os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{daemon}/ns/{ns}")]
        expect(not shared, f"worker shares the daemon's {shared} namespaces")
        expect(interfaces(pid) == ["lo"], f"worker interfaces {interfaces(pid)}")
        same_cgroup = Path(f"/proc/{pid}/cgroup").read_text() == \
            Path(f"/proc/{daemon}/cgroup").read_text()
        expect(same_cgroup, "the worker left the service's cgroup (escapes its limits)")
        reply = held.read_line()
        expect(reply.get("ok"), f"the slow load answered {reply}")
    return (f"worker {pid}: uid/gid {worker_user.pw_uid}/{worker_user.pw_gid} (picklejail), "
            f"NoNewPrivs 1, Seccomp 2, no capabilities, own pid/mnt/net/ipc/uts namespaces "
            f"with only lo, in the service's cgroup")


@check
def reload_rereads_policies(ctx):
    starts = [e for e in audit_events() if e.get("event") == "start"]
    expect(starts, "no start audit line in the journal")
    policy_dir = Path(starts[-1]["policy_dir"])
    policy = policy_dir / "systemd-check.json"
    try:
        reply, _ = load_file(ctx["fixture"], policy="systemd-check")
        expect(reply.get("error", {}).get("code") == "invalid_request",
               f"an unknown policy answered {reply}")
        policy.write_text(json.dumps({"name": "systemd-check", "extends": "weights"}))
        pid = main_pid()
        run("systemctl", "reload", SERVICE)
        with Connection() as c:
            wait_for(lambda: "systemd-check" in c.request({"op": "stats"})["stats"]["policies"],
                     "the reloaded policy to be listed")
        reply, _ = load_file(ctx["fixture"], policy="systemd-check")
        expect(reply.get("ok"), f"a load with the new policy answered {reply}")
        expect(main_pid() == pid, "reload restarted the daemon")
        expect(any(e.get("event") == "reload" for e in audit_events()), "no reload audit line")
    finally:
        policy.unlink(missing_ok=True)
    return f"{policy} unknown before, usable after systemctl reload (same pid {pid})"


@check
def hostile_file_refused_and_audited(ctx):
    hostile = SCRATCH / "os_system.pkl"
    hostile.write_bytes(os_system_pickle())
    reply, _ = load_file(hostile)
    error = reply.get("error", {})
    expect(error.get("code") == "forbidden_global" and error.get("global") == "os.system",
           f"the hostile file answered {reply}")
    lines = [e for e in audit_events()
             if e.get("op") == "load" and e.get("result") == "forbidden_global"]
    expect(lines, "no forbidden_global audit line in the journal")
    return f"refused: {error['message']}; journal: {json.dumps(lines[-1])[:200]}"


@check
def selftest_under_the_units_confinement(ctx):
    """Runs `picklejail selftest` as a oneshot unit with every hardening line of
    the installed picklejail.service: a worker spawned from inside that
    confinement must still get namespaces, pivot_root, its uid and filter."""
    unit_text = Path("/usr/lib/systemd/system/picklejail.service").read_text()
    replaced = ("Type=", "ExecStart=", "ExecReload=", "KillMode=", "TimeoutStopSec=",
                "Restart=", "RestartSec=", "RuntimeDirectory")
    service = [line for line in unit_text.split("[Service]", 1)[1].split("[Install]")[0]
               .splitlines() if line and not line.startswith(("#",) + replaced)]
    unit = Path("/run/systemd/system/picklejail-selftest.service")
    unit.write_text("[Service]\nType=oneshot\nExecStart=/usr/bin/picklejail selftest\n" +
                    "\n".join(service) + "\n")
    run("systemctl", "daemon-reload")
    result = run("systemctl", "start", unit.name, check=False)
    output = "\n".join(journal_lines(unit.name))
    expect(result.returncode == 0, f"selftest unit failed: {output[-1500:]}")
    expect("selftest: every forbidden act was stopped" in output, output[-1500:])
    acts = sum(1 for line in output.splitlines() if " stopped" in line)
    return f"{len(service)} hardening lines of the unit, {acts} acts stopped"


@check
def stop_drains_and_removes_shm(ctx):
    pid = main_pid()
    held = start_slow_load(ctx["slow"], transport="shm")
    stopping = subprocess.Popen(["systemctl", "stop", SERVICE])
    try:
        reply = held.read_line()
    finally:
        held.close()
    expect(stopping.wait(timeout=160) == 0, "systemctl stop failed")
    expect(reply.get("ok"), f"the request in flight answered {reply} during stop")
    shm = Path(reply["shm_path"])
    expect(not shm.exists(), f"{shm} left after stop")
    events = [e.get("event") for e in audit_events()]
    expect("drain" in events, "no drain audit line")
    state = show(SERVICE, "ActiveState", "Result")
    expect(state == {"ActiveState": "inactive", "Result": "success"}, f"after stop: {state}")
    with Connection() as c:
        again = c.request({"op": "ping"})
    expect(again.get("ok") and main_pid() != pid, "the socket did not start it again")
    return (f"the load in flight finished during stop ({reply['size']} bytes in {shm.name}), "
            f"{shm} removed, exit {state['Result']}; the next connection restarted it")


def setup(fixture):
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    if run("id", USER, check=False).returncode != 0:
        run("useradd", "--no-create-home", USER)
    slow = SCRATCH / "slow.pkl"
    slow.write_bytes(slow_pickle(3_000_000))
    slow.chmod(0o644)
    # The slow file holds 3 million objects; the shipped default stops at 2.
    config = json.loads(CONFIG.read_text())
    config["loader_limits"] = {"max_objects": 20_000_000}
    CONFIG.write_text(json.dumps(config, indent=2))
    return {"fixture": fixture, "slow": slow}


def main():
    ctx = setup(Path(sys.argv[1]))
    failed = []
    for function in CHECKS:
        try:
            print(f"PASS {function.__name__}: {function(ctx)}", flush=True)
        except Exception as e:  # every check runs and reports, whatever failed before
            failed.append(function.__name__)
            print(f"FAIL {function.__name__}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(CHECKS) - len(failed)} of {len(CHECKS)} checks passed" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
