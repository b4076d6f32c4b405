#!/usr/bin/python3
"""Checks a running picklejail container (scripts/container-test started it
with the privileges deploy/kubernetes/daemonset.yaml asks for) from the host:
host clients load through the bind-mounted socket, and the daemon and a
worker inside are confined as the manifest says, read from /proc.

python3 check_image.py SOCKET DAEMON_PID CLI FIXTURE SCRATCH
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "systemd"))
import pj_client  # noqa: E402
from check_service import (confined_worker, expect, interfaces, os_system_pickle,  # noqa: E402
                           proc_status, slow_pickle)
from pj_client import Connection, load_file  # noqa: E402

# The manifest's capabilities (linux/capability.h numbers).
MANIFEST_CAPS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
                 "CAP_SYS_ADMIN": 21}

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def host_cli_converts_through_the_socket(ctx):
    out = ctx["scratch"] / "daemon.safetensors"
    local = ctx["scratch"] / "local.safetensors"
    result = subprocess.run([ctx["cli"], "convert", "--json", "--socket", pj_client.SOCKET,
                             str(ctx["fixture"]), str(out)], capture_output=True, text=True)
    expect(result.returncode == 0, f"picklejail convert: {result.stderr.strip()}")
    # The same conversion in a sandbox on the host must give the same bytes.
    result = subprocess.run([ctx["cli"], "convert", "--local", str(ctx["fixture"]), str(local)],
                            capture_output=True, text=True)
    expect(result.returncode == 0, f"picklejail convert --local: {result.stderr.strip()}")
    expect(out.read_bytes() == local.read_bytes(), "the container's image differs from a local one")
    return f"{out.stat().st_size} bytes, identical to a local conversion"


@check
def host_client_gets_a_sealed_memfd(ctx):
    reply, header = load_file(ctx["fixture"])
    expect(reply.get("ok"), f"load answered {reply}")
    names = [k for k in header if k != "__metadata__"]
    expect(len(names) == reply["tensors"] > 0, f"header {len(names)} vs {reply['tensors']}")
    return f"{reply['tensors']} tensors in a {reply['size']}-byte memfd across the container"


@check
def hostile_file_refused(ctx):
    hostile = ctx["scratch"] / "os_system.pkl"
    hostile.write_bytes(os_system_pickle())
    reply, _ = load_file(hostile)
    error = reply.get("error", {})
    expect(error.get("code") == "forbidden_global" and error.get("global") == "os.system",
           f"answered {reply}")
    return error["message"]


@check
def daemon_has_only_the_manifests_privileges(ctx):
    pid = ctx["daemon"]
    status = proc_status(pid)
    wanted = sum(1 << n for n in MANIFEST_CAPS.values())
    for key in ("CapBnd", "CapPrm", "CapEff"):
        expect(int(status[key], 16) == wanted, f"daemon {key} {status[key]}, wanted {wanted:#x}")
    expect(status["NoNewPrivs"] == "1", "allowPrivilegeEscalation: false is not in force")
    expect(status["Seccomp"] == "2", f"no runtime seccomp filter (Seccomp {status['Seccomp']})")
    root = next(line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/")
    expect("ro" in root.split()[5].split(","), f"the root filesystem is writable: {root}")
    return (f"CapBnd=CapEff {wanted:#x} ({'+'.join(sorted(MANIFEST_CAPS))}), NoNewPrivs 1, "
            f"runtime seccomp filter, read-only root")


@check
def worker_inside_is_confined(ctx):
    daemon = ctx["daemon"]
    passwd = Path(f"/proc/{daemon}/root/etc/passwd").read_text()
    worker_uid = next(int(line.split(":")[2]) for line in passwd.splitlines()
                      if line.startswith("picklejail:"))
    with open(ctx["slow"], "rb") as f, Connection(timeout=120) as held:
        held.send({"op": "load", "fd": True}, fd=f.fileno())
        with Connection() as probe:
            deadline = time.monotonic() + 10
            while probe.request({"op": "stats"})["stats"]["workers_running"] == 0:
                expect(time.monotonic() < deadline, "the slow load never started a worker")
                time.sleep(0.02)
        pid = confined_worker(daemon)
        status = proc_status(pid)
        expect(status["Uid"].split() == [str(worker_uid)] * 4, f"worker Uid {status['Uid']}")
        expect(status["NoNewPrivs"] == "1" and status["Seccomp"] == "2",
               f"worker NoNewPrivs {status['NoNewPrivs']} Seccomp {status['Seccomp']}")
        for k in ("CapPrm", "CapEff", "CapInh", "CapAmb"):
            expect(int(status[k], 16) == 0, f"worker {k} {status[k]}")
        bounding = int(proc_status(daemon)["CapBnd"], 16)
        expect(int(status["CapBnd"], 16) & ~bounding == 0, f"worker CapBnd {status['CapBnd']}")
        shared = [ns for ns in ("pid", "mnt", "net", "ipc", "uts")
                  if os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{daemon}/ns/{ns}")]
        expect(not shared, f"worker shares the daemon's {shared} namespaces")
        expect(interfaces(pid) == ["lo"], f"worker interfaces {interfaces(pid)}")
        reply = held.read_line()
        expect(reply.get("ok"), f"the slow load answered {reply}")
    return (f"worker {pid}: uid {worker_uid} (picklejail), NoNewPrivs 1, Seccomp 2, no "
            f"capabilities, own pid/mnt/net/ipc/uts namespaces with only lo")


# A client of another uid, self-contained (it reads no file of this tree):
# loads the inherited fd with the shm transport, reports the object's owner
# and mode, and releases it.
SHM_CLIENT = """
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
line = json.dumps({"op": "load", "fd": True, "transport": "shm"}).encode() + b"\\n"
socket.send_fds(s, [line], [int(sys.argv[2])])
reply = json.loads(s.makefile("rb").readline())
if reply.get("ok"):
    st = os.stat(reply["shm_path"])
    reply["owner"], reply["mode"] = st.st_uid, oct(st.st_mode & 0o7777)
    s.sendall(json.dumps({"op": "release", "shm_name": reply["shm_name"]}).encode() + b"\\n")
print(json.dumps(reply))
"""


@check
def shm_object_handed_to_the_callers_uid(ctx):
    """CAP_CHOWN: the daemon gives each shm object to the uid that asked."""
    uid = 65534
    with open(ctx["fixture"], "rb") as f:
        result = subprocess.run([sys.executable, "-c", SHM_CLIENT, pj_client.SOCKET,
                                 str(f.fileno())], pass_fds=[f.fileno()], user=uid, group=uid,
                                extra_groups=[], capture_output=True, text=True, timeout=60)
    expect(result.returncode == 0, f"the uid {uid} client: {result.stderr.strip()[-400:]}")
    reply = json.loads(result.stdout)
    expect(reply.get("ok"), f"uid {uid} shm load answered {reply}")
    expect(reply["owner"] == uid and reply["mode"] == "0o600",
           f"{reply['shm_path']} owned by {reply['owner']} mode {reply['mode']}")
    return f"{reply['shm_path']} owned by uid {uid}, mode 0600"


@check
def cancel_kills_the_worker(ctx):
    """CAP_KILL: the daemon (root) kills a worker (another uid) whose client left."""
    daemon = ctx["daemon"]
    with open(ctx["slow"], "rb") as f:
        held = Connection(timeout=120)
        held.send({"op": "load", "fd": True}, fd=f.fileno())
        pid = confined_worker(daemon)
        held.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and proc_status(pid).get("State", "")[:1] != "Z":
        expect(time.monotonic() < deadline, f"worker {pid} still runs after its client left")
        time.sleep(0.02)
    return f"worker {pid} killed within {10 - (deadline - time.monotonic()):.2f} s of the cancel"


def main():
    socket_path, daemon, cli, fixture, scratch = sys.argv[1:6]
    pj_client.SOCKET = socket_path
    scratch = Path(scratch)
    slow = scratch / "slow.pkl"
    slow.write_bytes(slow_pickle(3_000_000))
    ctx = {"daemon": int(daemon), "cli": cli, "fixture": Path(fixture), "scratch": scratch,
           "slow": slow}
    failed = []
    for function in CHECKS:
        try:
            print(f"PASS {function.__name__}: {function(ctx)}", flush=True)
        except Exception as e:  # every check runs and reports
            failed.append(function.__name__)
            print(f"FAIL {function.__name__}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(CHECKS) - len(failed)} of {len(CHECKS)} checks passed" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
