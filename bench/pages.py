"""Fresh pages per job (issue 17, item 3): minor faults and peak RSS, worker and client side.

Worker: the daemon's audit line for each load (`minor_faults`, `peak_rss_kib`,
from wait4's rusage of the reaped worker). Client: getrusage of a fresh Python
process around one load and the sum of every tensor (torch imported before),
and its VmHWM growth; torch.load(weights_only=True) measured the same way.
Medians of `repeat` fresh processes.

    bench/pages.py --socket S --audit-log DAEMON_STDERR FILE [FILE...]
"""

import argparse
import json
import resource
import statistics
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


def client_side(kind, path, socket, repeat):
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(path), "--socket",
                              socket], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


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
    return {"client": ours, "worker": worker, "torch_load": ref}


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
