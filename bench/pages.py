"""Fresh pages per job (issue 17, item 3): minor faults and peak RSS, worker and client side.

Worker: the daemon's audit line for each load (`minor_faults`, `peak_rss_kib`,
from wait4's rusage of the reaped worker). Daemon: its own minor faults
(/proc/PID/stat of the socket's peer) across each load; a fork-style spawn
left every page it wrote afterwards copy-on-write, ~1,800 faults per
20,000-tensor job, where CLONE_VM | CLONE_VFORK leaves a few dozen. Client:
getrusage of a fresh Python
process around one load and the sum of every tensor (torch imported before),
and its VmHWM growth; torch.load(weights_only=True) measured the same way.
Medians of `repeat` fresh processes.

    bench/pages.py --socket S --audit-log DAEMON_STDERR FILE [FILE...]
"""

import argparse
import json
import resource
import socket as socketlib
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))


def _hwm_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def one(kind, path, socket):
    """In a fresh process: faults, peak-RSS growth and time of one load and sum."""
    import torch
    torch.set_num_threads(1)
    if kind == "picklejail":
        import picklejail
        load = lambda: picklejail.load(path, socket=socket)  # noqa: E731
    else:
        load = lambda: torch.load(path, weights_only=True)  # noqa: E731
    before, hwm = resource.getrusage(resource.RUSAGE_SELF), _hwm_kib()
    start = time.perf_counter()
    loaded = load()
    total = 0.0
    for value in loaded.values():
        total += float(value.sum())
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"minor_faults": after.ru_minflt - before.ru_minflt,
            "hwm_growth_kib": _hwm_kib() - hwm, "seconds": elapsed}


def daemon_pid(socket):
    """The pid of the process listening at `socket` (SO_PEERCRED), or None."""
    try:
        with socketlib.socket(socketlib.AF_UNIX) as s:
            s.connect(socket)
            creds = s.getsockopt(socketlib.SOL_SOCKET, socketlib.SO_PEERCRED,
                                 struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None


def minor_faults_of(pid):
    """minflt of process `pid` (field 10 of /proc/PID/stat), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return None


def client_side(kind, path, socket, repeat):
    """Medians over fresh processes; with picklejail also the daemon's faults per load."""
    runs = []
    daemon = daemon_pid(socket) if kind == "picklejail" else None
    for _ in range(repeat):
        before = minor_faults_of(daemon) if daemon else None
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(path), "--socket",
                              socket], check=True, capture_output=True, text=True)
        run = json.loads(out.stdout)
        after = minor_faults_of(daemon) if daemon else None
        if before is not None and after is not None:
            run["daemon_minor_faults"] = after - before
        runs.append(run)
    keys = {key for run in runs for key in run}
    return {key: statistics.median(r[key] for r in runs if key in r) for key in keys}


def worker_side(audit_log, since_line):
    lines = Path(audit_log).read_text().splitlines()[since_line:]
    entries = [json.loads(l) for l in lines if l.startswith("{")]
    loads = [e for e in entries if e.get("event") == "request" and e.get("result") == "ok"
             and "minor_faults" in e]
    if not loads:
        return None
    return {"minor_faults": statistics.median(e["minor_faults"] for e in loads),
            "peak_rss_kib": statistics.median(e["peak_rss_kib"] for e in loads)}


def measure(path, socket, audit_log, repeat):
    start = len(Path(audit_log).read_text().splitlines()) if audit_log else 0
    ours = client_side("picklejail", path, socket, repeat)
    worker = worker_side(audit_log, start) if audit_log else None
    ref = client_side("torch", path, socket, repeat)
    daemon = ours.pop("daemon_minor_faults", None)
    return {"client": ours, "worker": worker, "daemon_minor_faults": daemon, "torch_load": ref}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        p = argparse.ArgumentParser()
        p.add_argument("--one", nargs=2)
        p.add_argument("--socket")
        a = p.parse_args()
        print(json.dumps(one(a.one[0], a.one[1], a.socket)))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--audit-log")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for path in args.files:
        print(path, json.dumps(measure(path, args.socket, args.audit_log, args.repeat)))


if __name__ == "__main__":
    main()
