"""End-to-end benchmarks: picklejail.load against torch.load(weights_only=True)
on the same files in the same run, tensors touched (every tensor summed) so
lazy mapping cannot hide work. Prints a Markdown table of medians and ratios.
Each judged load is the first load of a fresh Python process (as a training
job's is); the same comparison repeated inside one process is shown below it.

Run through scripts/bench, which builds everything and starts the daemons:
    bench/end_to_end.py --socket COLD.sock --cached-socket CACHED.sock \
        --shared-socket SHARED.sock --data DIR
"""

import argparse
import collections
import inspect
import json
import multiprocessing
import os
import shutil
import socket as socketlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))
import picklejail  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pages import measure as measure_pages  # noqa: E402


# ---------------------------------------------------------------- inputs

def gpt2_state_dict():
    """GPT-2 small's shapes (124M float32 parameters, ~500 MB) with tied embeddings."""
    g = torch.Generator().manual_seed(0)
    V, D, L = 50257, 768, 12
    sd = collections.OrderedDict()
    sd["wte.weight"] = torch.randn(V, D, generator=g)
    sd["wpe.weight"] = torch.randn(1024, D, generator=g)
    for i in range(L):
        p = f"h.{i}."
        for name, shape in [("ln_1.weight", (D,)), ("ln_1.bias", (D,)),
                            ("attn.c_attn.weight", (D, 3 * D)), ("attn.c_attn.bias", (3 * D,)),
                            ("attn.c_proj.weight", (D, D)), ("attn.c_proj.bias", (D,)),
                            ("ln_2.weight", (D,)), ("ln_2.bias", (D,)),
                            ("mlp.c_fc.weight", (D, 4 * D)), ("mlp.c_fc.bias", (4 * D,)),
                            ("mlp.c_proj.weight", (4 * D, D)), ("mlp.c_proj.bias", (D,))]:
            sd[p + name] = torch.randn(*shape, generator=g)
    sd["ln_f.weight"] = torch.randn(D, generator=g)
    sd["ln_f.bias"] = torch.randn(D, generator=g)
    sd["lm_head.weight"] = sd["wte.weight"]  # tied
    return sd


def make_inputs(data, big):
    data.mkdir(parents=True, exist_ok=True)
    files = {"gpt2": data / "gpt2_500MB.pt", "small": data / "small_20000.pt",
             "tiny": data / "tiny.pt"}
    if not files["gpt2"].exists():
        torch.save(gpt2_state_dict(), files["gpt2"])
    if not files["small"].exists():
        g = torch.Generator().manual_seed(1)
        torch.save(collections.OrderedDict((f"layers.{i}.weight", torch.randn(16, generator=g))
                                           for i in range(20_000)), files["small"])
    if not files["tiny"].exists():
        torch.save({"w": torch.ones(4, 4), "b": torch.zeros(4)}, files["tiny"])
    if big:
        files["big"] = data / "big_2GB.pt"
        if not files["big"].exists():
            g = torch.Generator().manual_seed(2)
            torch.save({f"block.{i}": torch.randn(128, 1024, 1024 // 128 * 32, generator=g)
                        for i in range(16)}, files["big"])
    return files


# ---------------------------------------------------------------- measuring

def touch(obj):
    """Sum every tensor, so each byte is really read."""
    total = 0.0
    seen = set()
    for value in obj.values():
        if id(value) not in seen:
            seen.add(id(value))
            total += float(value.sum())
    return total


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        touch(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_has_mmap():
    """torch.load(mmap=True) exists from torch 2.1."""
    return "mmap" in inspect.signature(torch.load).parameters


LOADERS = {
    "torch": lambda path, socket: torch.load(path, weights_only=True),
    "torch-mmap": lambda path, socket: torch.load(path, weights_only=True, mmap=True),
    "picklejail": lambda path, socket: picklejail.load(path, socket=socket),
    "picklejail-mmap": lambda path, socket: picklejail.load(path, socket=socket, mmap=True),
}


def time_one(kind, path, socket):
    """One load and touch in this (fresh) process; torch is imported before the clock starts."""
    load = lambda: LOADERS[kind](path, socket)  # noqa: E731
    torch.set_num_threads(1)
    start = time.perf_counter()
    touch(load())
    return time.perf_counter() - start


def fresh_timed(kind, path, socket, repeat):
    """Median of `repeat` loads, each the first load of a new Python process, as a job's is.

    Repeated loads in one process flatter torch.load: glibc hands each load
    back the memory the previous one freed, already faulted in, which a job
    loading its checkpoint once never gets.
    """
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--time-one", kind, str(path),
                              "--socket", socket], check=True, capture_output=True, text=True)
        times.append(float(out.stdout))
    return statistics.median(times)


def fresh_timed_pairs(path, socket, repeat, kinds=("torch", "picklejail")):
    """Medians of each kind (torch.load, picklejail, ...), taking turns one fresh process each.

    This VM's speed drifts by tens of percent over minutes; taking turns puts
    both sides of a ratio under the same drift.
    """
    times = {kind: [] for kind in kinds}
    for _ in range(repeat):
        for kind in kinds:
            times[kind].append(fresh_timed(kind, path, socket, 1))
    return tuple(statistics.median(times[kind]) for kind in kinds)


def mmap_rows(files, socket, repeat, rows, numbers):
    """mmap=True: the worker checks the file, the client maps it (no copy). Each file's
    row takes turns between torch.load, picklejail copying, picklejail mapping and,
    where torch has it, torch.load(mmap=True)."""
    kinds = ["torch", "picklejail", "picklejail-mmap"] + (["torch-mmap"] if torch_has_mmap()
                                                         else [])
    for label, path, target in [("500 MB state dict, mmap=True", files["gpt2"], 0.35),
                                ("20,000 small tensors, mmap=True", files["small"], None)]:
        read_once(path)
        medians = dict(zip(kinds, fresh_timed_pairs(path, socket, repeat, kinds)))
        ref, ours, copied = medians["torch"], medians["picklejail-mmap"], medians["picklejail"]
        ratio = ours / ref
        numbers[label] = {"torch_s": ref, "picklejail_mmap_s": ours, "picklejail_copy_s": copied,
                          "ratio": ratio, "torch_mmap_s": medians.get("torch-mmap")}
        judged = ratio <= target if target else ours <= copied * 1.05
        rows.append((label, f"{ref * 1000:.0f} ms",
                     f"{ours * 1000:.0f} ms (copying: {copied * 1000:.0f} ms)", f"{ratio:.2f}×",
                     f"≤ {target}×" if target else "no slower than copying",
                     "met" if judged else "NOT met"))
        if "torch-mmap" in medians:
            rows.append(("… torch.load(weights_only=True, mmap=True)", "",
                         f"{medians['torch-mmap'] * 1000:.0f} ms",
                         f"{medians['torch-mmap'] / ref:.2f}×", "", ""))


def read_once(path):
    with open(path, "rb") as f:
        return len(f.read())


def read_time(path, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        read_once(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stats(sock):
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(b'{"op":"stats"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(1 << 20)
    return json.loads(buf)["stats"]


def _concurrent_load(args):
    path, sock, barrier_at = args
    while time.time() < barrier_at:
        time.sleep(0.0005)
    start = time.perf_counter()
    touch(picklejail.load(path, socket=sock))
    return time.perf_counter() - start


def concurrent(path, sock, processes):
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        barrier_at = time.time() + 0.5
        start_wall = barrier_at
        durations = pool.map(_concurrent_load, [(path, sock, barrier_at)] * processes)
        wall = time.time() - start_wall
    return wall, max(durations)


# ---------------------------------------------------------------- fairness

LOADER_UID, OTHER_UID = 40001, 40002  # two users of the daemon (as root; else our own uid)


def _become(uid):
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def _keep_loading(path, sock, stop):
    """One of the busy user's processes: loads the large file until told to stop."""
    with open(path, "rb") as f:  # opened before the uid drop, passed by fd
        _become(LOADER_UID)
        while not stop.is_set():
            picklejail.load(f, socket=sock, backend="numpy")


def _small_latencies(path, sock, count, results):
    with open(path, "rb") as f:
        _become(OTHER_UID)
        lat = []
        for _ in range(count):
            start = time.perf_counter()
            picklejail.load(f, socket=sock, backend="numpy")
            lat.append(time.perf_counter() - start)
            time.sleep(0.05)
    results.put(lat)


def small_load_latencies(small, sock, count):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_small_latencies, args=(small, sock, count, results))
    proc.start()
    lat = results.get(timeout=600)
    proc.join()
    return sorted(lat)


def fairness(large, small, sock, count=30):
    """A second user's small-load latency, on an idle daemon and while another
    user keeps 8 large loads in flight (issue 14's fairness target: about one
    large job at most)."""
    idle = small_load_latencies(small, sock, count)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    loaders = [ctx.Process(target=_keep_loading, args=(large, sock, stop)) for _ in range(8)]
    for proc in loaders:
        proc.start()
    time.sleep(2)  # every loader has a request in flight
    busy = small_load_latencies(small, sock, count)
    stop.set()
    for proc in loaders:
        proc.join(timeout=120)
    one_large = fresh_timed("picklejail", large, sock, 1)
    pct = lambda lat, q: lat[min(len(lat) - 1, int(len(lat) * q))]  # noqa: E731
    return {"idle_p50": pct(idle, 0.5), "idle_p99": pct(idle, 0.99), "busy_p50": pct(busy, 0.5),
            "busy_p99": pct(busy, 0.99), "one_large": one_large}


# ---------------------------------------------------------------- the table

def print_table(rows):
    print("| benchmark | torch.load | picklejail | ratio | target | |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--time-one":  # a child of fresh_timed
        one = argparse.ArgumentParser()
        one.add_argument("--time-one", nargs=2, metavar=("KIND", "PATH"))  # a LOADERS key
        one.add_argument("--socket")
        known = one.parse_args()
        print(time_one(known.time_one[0], known.time_one[1], known.socket))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="daemon without cache (cold loads)")
    parser.add_argument("--cached-socket", required=True, help="daemon with the image cache")
    parser.add_argument("--shared-socket", required=True,
                        help="caching daemon for the concurrent row (room for two images)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--big", action="store_true", help="also measure a 2 GB checkpoint")
    parser.add_argument("--audit-log", type=Path, help="the cold daemon's stderr (peak RSS)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--only-mmap", action="store_true", help="only the mmap=True rows")
    args = parser.parse_args()
    files = make_inputs(args.data, args.big)
    torch.set_num_threads(1)
    rows, numbers = [], {}
    if args.only_mmap:
        mmap_rows(files, args.socket, args.repeat, rows, numbers)
        print_table(rows)
        return

    def compare(label, path, target):
        """The judged row: first loads in fresh processes; then the same in one process."""
        read_once(path)  # both sides start with the file in the page cache
        ref, ours = fresh_timed_pairs(path, args.socket, args.repeat)
        ratio = ours / ref
        numbers[label] = {"torch_s": ref, "picklejail_s": ours, "ratio": ratio, "target": target}
        rows.append((label, f"{ref * 1000:.0f} ms", f"{ours * 1000:.0f} ms", f"{ratio:.2f}×",
                     f"≤ {target}×", "met" if ratio <= target else "NOT met"))
        warm_ref = timed(lambda: torch.load(path, weights_only=True), args.repeat)
        warm = timed(lambda: picklejail.load(path, socket=args.socket), args.repeat)
        numbers[label + ", repeated in one process"] = {
            "torch_s": warm_ref, "picklejail_s": warm, "ratio": warm / warm_ref}
        rows.append(("… repeated in one process", f"{warm_ref * 1000:.0f} ms",
                     f"{warm * 1000:.0f} ms", f"{warm / warm_ref:.2f}×", "", ""))

    compare("500 MB state dict (GPT-2 shapes, tied)", files["gpt2"], 1.0)
    read_ref = read_time(files["gpt2"], args.repeat)
    numbers["read_500MB_s"] = read_ref
    rows.append(("read() of the 500 MB file (reference)", "", f"{read_ref * 1000:.0f} ms",
                 f"{read_ref / numbers['500 MB state dict (GPT-2 shapes, tied)']['torch_s']:.2f}×",
                 "", ""))
    compare("20,000 small tensors", files["small"], 0.25)
    mmap_rows(files, args.socket, args.repeat, rows, numbers)

    # Fresh pages per job (issue 17): the worker's minor faults and peak RSS
    # from the daemon's audit lines, the client's from getrusage in a fresh
    # process around one load and sum (bench/pages.py), torch.load's alike.
    if args.audit_log:
        for key, label in (("small", "20,000 tensors"), ("gpt2", "500 MB")):
            pages = measure_pages(str(files[key]), args.socket, str(args.audit_log), args.repeat)
            numbers[f"pages per job, {label}"] = pages
            worker, client, ref = pages["worker"] or {}, pages["client"], pages["torch_load"]
            rows.append((f"fresh pages per job, {label}: minor faults (peak RSS growth)",
                         f"{ref['minor_faults']:.0f} ({ref['hwm_growth_kib'] / 1024:.0f} MiB)",
                         f"worker {worker.get('minor_faults', 0):.0f} "
                         f"({worker.get('peak_rss_kib', 0) / 1024:.0f} MiB peak), daemon "
                         f"{pages['daemon_minor_faults'] or 0:.0f}, client "
                         f"{client['minor_faults']:.0f} ({client['hwm_growth_kib'] / 1024:.0f} MiB)",
                         "", "", ""))

    # Cached: the second and later loads of the same file.
    picklejail.load(files["gpt2"], socket=args.cached_socket)
    cached = fresh_timed("picklejail", files["gpt2"], args.cached_socket, args.repeat)
    ref = numbers["500 MB state dict (GPT-2 shapes, tied)"]["torch_s"]
    numbers["500MB_cached_s"] = cached
    rows.append(("500 MB, cached image (repeat load)", f"{ref * 1000:.0f} ms",
                 f"{cached * 1000:.0f} ms", f"{cached / ref:.2f}×", "", ""))

    # Tiny checkpoint round trip through the daemon.
    lat = []
    for _ in range(200):
        start = time.perf_counter()
        picklejail.load(files["tiny"], socket=args.socket)
        lat.append(time.perf_counter() - start)
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    numbers["tiny_p50_ms"], numbers["tiny_p99_ms"] = p50 * 1000, p99 * 1000
    rows.append(("tiny checkpoint round trip p50 / p99", "", f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms",
                 "", "p50 ≤ 3 ms", "met" if p50 * 1000 <= 3 else "NOT met"))

    fair = fairness(files["gpt2"], files["tiny"], args.socket)
    numbers["fairness"] = fair
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    rows.append(("another user's tiny load p50 / p99, idle daemon", "",
                 f"{fair['idle_p50'] * 1000:.1f} / {fair['idle_p99'] * 1000:.1f} ms", "", "", ""))
    rows.append(("… while one user keeps 8 × 500 MB loads in flight",
                 f"one 500 MB load {ms(fair['one_large'])} ms",
                 f"{ms(fair['busy_p50'])} / {ms(fair['busy_p99'])} ms",
                 f"{fair['busy_p99'] / fair['one_large']:.2f}× one load (p99)",
                 "≤ ~1 large job", "met" if fair["busy_p99"] <= 1.5 * fair["one_large"] else
                 "NOT met"))

    # 8 processes load the 500 MB file at once through a caching daemon of its
    # own. Each file is a fresh copy (a new inode the cache has not seen),
    # written back first: the row is about sharing one conversion, not about
    # the disk absorbing a 500 MB copy made a moment ago. The baseline is one
    # process loading another fresh copy through the same daemon just before,
    # so both conversions fill fresh memory under the same conditions (on
    # this VM, memory not touched for a while is several times slower to fill).
    def fresh_copy(name):
        path = args.data / name
        shutil.copyfile(files["gpt2"], path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return path

    # A second round of 8 on the same file finds the image cached: no
    # conversion at all, so its wall time is the floor this machine puts
    # under the first round (8 mappings and sums of 500 MB on its cores).
    singles, walls, slowests, workers, touch_floors = [], [], [], set(), []
    for _ in range(3):  # medians of three, each on fresh copies
        alone = fresh_copy("gpt2_500MB_alone.pt")
        singles.append(fresh_timed("picklejail", alone, args.shared_socket, 1))
        alone.unlink()
        shared = fresh_copy("gpt2_500MB_concurrent.pt")
        before = stats(args.shared_socket)
        wall, slowest = concurrent(shared, args.shared_socket, 8)
        after = stats(args.shared_socket)
        touch_floors.append(concurrent(shared, args.shared_socket, 8)[0])
        shared.unlink()
        walls.append(wall)
        slowests.append(slowest)
        workers.add(after["workers_started"] - before["workers_started"])
    single, wall, slowest, touch_floor = (statistics.median(x)
                                          for x in (singles, walls, slowests, touch_floors))
    workers = max(workers)  # conversions per round of 8: the worst round counts
    ratio = wall / single
    numbers["concurrent"] = {"wall_s": wall, "slowest_s": slowest, "single_s": single,
                             "ratio": ratio, "workers_started": workers,
                             "cache_bytes": after["cache"]["bytes"]}
    rows.append(("8 processes load one 500 MB file at once", f"single {single * 1000:.0f} ms",
                 f"{wall * 1000:.0f} ms, {workers} conversion", f"{ratio:.2f}×", "≤ 1.5×, 1 conversion",
                 "met" if ratio <= 1.5 and workers == 1 else "NOT met"))
    numbers["concurrent"]["cached_wall_s"] = touch_floor
    rows.append(("… the same 8 again, image cached (no conversion: the floor)",
                 f"single {single * 1000:.0f} ms", f"{touch_floor * 1000:.0f} ms",
                 f"{touch_floor / single:.2f}×", "", ""))

    if args.big and args.audit_log:
        picklejail.load(files["big"], socket=args.socket)
        entries = [json.loads(l) for l in args.audit_log.read_text().splitlines() if l.startswith("{")]
        last = [e for e in entries if e.get("event") == "request" and e.get("result") == "ok"][-1]
        # RSS counts every page the worker touched: its heap, the output pages
        # it wrote through its mapping and the input pages it read through its
        # mapping (page cache, shared). The target allows the output plus 64 MiB.
        peak, output = last["peak_rss_kib"] / 1024, last["bytes"] / 2**20
        numbers["big_worker_peak_rss_mib"], numbers["big_output_mib"] = peak, output
        rows.append(("worker peak RSS, 2 GB checkpoint", "",
                     f"{peak:.0f} MiB for a {output:.0f} MiB image", "",
                     "≤ output + 64 MiB", "met" if peak <= output + 64 else "NOT met"))

    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
