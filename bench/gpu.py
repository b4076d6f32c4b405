"""GPU benchmarks (issue 17): checkpoints straight into CUDA memory, against the references.

For each size (fp16 state dicts of 512 MiB, 2 GiB and 16 GiB by default), in
one run on the GPU host, medians of fresh processes (CUDA initialised and
torch imported before the clock starts; every load ends with
torch.cuda.synchronize()):

  * the pinned-memcpy ceiling measured right there (one pinned buffer to the
    device, cudaMemcpyAsync), and the pageable one;
  * picklejail cold: a daemon without cache, so every load converts the file;
  * picklejail cached: a caching daemon that already holds the image; the
    first load of a fresh process, ring (pinned on first use) and read-only
    registration made for that load;
  * picklejail cached, in a long-lived process: a second load with the ring
    already pinned, and with the image's registration kept from the first;
  * safetensors.torch.load_file(device="cuda") of the same weights (the
    image picklejail writes is that file), when safetensors is installed;
  * torch.load(weights_only=True, map_location="cuda").

Run through `scripts/bench --gpu`, which builds and starts the daemons:
    bench/gpu.py --socket COLD.sock --cached-socket CACHED.sock --data DIR [--sizes 512M,2G]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))

GiB, MiB = 1 << 30, 1 << 20
TENSOR_ELEMENTS = 4096 * 4096  # 32 MiB per fp16 tensor, as a large model's matrices are


def parse_size(text):
    units = {"K": 1 << 10, "M": MiB, "G": GiB}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units \
        else int(text)


def label(size):
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


def make_checkpoint(path, size):
    """An fp16 state dict of `size` bytes (plus a tied head) saved by torch.save."""
    import collections

    import torch
    if path.exists():
        return path
    g = torch.Generator().manual_seed(size % 1000)
    sd = collections.OrderedDict()
    for i in range(max(1, size // (TENSOR_ELEMENTS * 2))):
        sd[f"layers.{i}.weight"] = torch.randn(4096, 4096, generator=g).to(torch.float16)
    sd["head.weight"] = sd["layers.0.weight"]  # tied
    tmp = path.with_suffix(".tmp")
    torch.save(sd, tmp)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------- one measurement (child)

def time_one(kind, path, socket, strategy):
    import torch
    torch.cuda.init()
    torch.empty(1, device="cuda")  # the context exists before the clock starts
    torch.cuda.synchronize()
    if kind == "safetensors":
        from safetensors.torch import load_file
        load = lambda: load_file(path, device="cuda")  # noqa: E731
    elif kind == "torch":
        load = lambda: torch.load(path, weights_only=True, map_location="cuda")  # noqa: E731
    else:
        import picklejail
        from picklejail import cuda
        keep = 64 * GiB if kind == "picklejail-kept" else 0
        cuda.set_shared_options(torch, cuda.CudaOptions(strategy=strategy,
                                                        keep_registered_bytes=keep))
        load = lambda: picklejail.load(path, map_location="cuda", socket=socket)  # noqa: E731
        if kind in ("picklejail-second", "picklejail-kept"):
            load_and_sync(load, torch)  # this process's first load, not timed (freed at once)
    elapsed, result = load_and_sync(load, torch)
    strategy_used = None
    if kind.startswith("picklejail"):
        from picklejail import cuda
        strategy_used = cuda.shared_loader(torch).last_strategy
    return {"seconds": elapsed, "strategy": strategy_used,
            "bytes": sum(t.numel() * t.element_size() for t in result.values())}


def load_and_sync(load, torch):
    start = time.perf_counter()
    result = load()
    torch.cuda.synchronize()
    return [time.perf_counter() - start, result]


def fresh(kind, path, socket, strategy, repeat):
    times, strategies = [], set()
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--time-one", kind, str(path),
                              "--socket", socket or "", "--strategy", strategy],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
        one = json.loads(out.stdout)
        times.append(one["seconds"])
        strategies.add(one["strategy"])
    return {"seconds": statistics.median(times), "all": times,
            "strategy": "/".join(sorted(s for s in strategies if s))}


# ---------------------------------------------------------------- ceilings

def memcpy_ceiling(size, repeat):
    """Seconds to copy `size` bytes host to device from pinned and from pageable memory."""
    import torch
    chunk = min(size, 2 * GiB)
    device = torch.empty(chunk, dtype=torch.uint8, device="cuda")
    out = {}
    for name, host in (("pinned", torch.empty(chunk, dtype=torch.uint8, pin_memory=True)),
                       ("pageable", torch.empty(chunk, dtype=torch.uint8))):
        host.fill_(1)
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            device.copy_(host, non_blocking=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * size / chunk
        del host
    return out


# ---------------------------------------------------------------- the table

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--time-one":
        one = argparse.ArgumentParser()
        one.add_argument("--time-one", nargs=2)
        one.add_argument("--socket")
        one.add_argument("--strategy", default="auto")
        known = one.parse_args()
        print(json.dumps(time_one(known.time_one[0], known.time_one[1], known.socket or None,
                                  known.strategy)))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="daemon without cache (cold loads)")
    parser.add_argument("--cached-socket", required=True, help="daemon with the image cache")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sizes", default="512M,2G,16G")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): nothing to measure")
        return 1
    import picklejail
    try:
        import safetensors.torch  # noqa: F401
        have_safetensors = True
    except ImportError:
        have_safetensors = False
    args.data.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    rows, numbers = [], {}
    for size in map(parse_size, args.sizes.split(",")):
        repeat = args.repeat if size <= 2 * GiB else max(3, args.repeat // 2)
        pt = make_checkpoint(args.data / f"fp16_{label(size).replace(' ', '')}.pt", size)
        st = pt.with_suffix(".safetensors")
        if not st.exists():
            picklejail.convert(pt, st, socket=args.socket)
        for f in (pt, st):  # both start from the page cache
            with open(f, "rb") as handle:
                while handle.read(64 * MiB):
                    pass
        picklejail.load(pt, socket=args.cached_socket, backend="numpy")  # the image is cached
        ceiling = memcpy_ceiling(size, repeat)
        got = {
            "picklejail cold (conversion included)": fresh("picklejail", pt, args.socket, "auto",
                                                           repeat),
            "picklejail cached, fresh process, ring": fresh("picklejail", pt, args.cached_socket,
                                                            "ring", repeat),
            "picklejail cached, fresh process, registered for the load":
                fresh("picklejail", pt, args.cached_socket, "register", repeat),
            "picklejail cached, long-lived process, ring pinned": fresh(
                "picklejail-second", pt, args.cached_socket, "ring", repeat),
            "picklejail cached, long-lived process, registration kept": fresh(
                "picklejail-kept", pt, args.cached_socket, "auto", repeat),
            "torch.load(weights_only=True, map_location='cuda')": fresh("torch", pt, None, "auto",
                                                                        repeat),
        }
        if have_safetensors:
            got["safetensors load_file(device='cuda')"] = fresh("safetensors", st, None, "auto",
                                                                repeat)
        numbers[label(size)] = {"ceiling_s": ceiling, "loads": got}
        rows.append((label(size), "pinned memcpy ceiling", ceiling["pinned"], size, ""))
        rows.append((label(size), "pageable memcpy", ceiling["pageable"], size, ""))
        for name, result in got.items():
            rows.append((label(size), name, result.get("seconds"), size,
                         result.get("strategy") or "; ".join(result.get("error", []))))
        if not have_safetensors:
            rows.append((label(size), "safetensors load_file", None, size, "not installed"))
    print("| size | load | time | GB/s | note |")
    print("|---|---|---|---|---|")
    for size_label, name, seconds, size, note in rows:
        if seconds is None:
            print(f"| {size_label} | {name} | – | – | {note} |")
        else:
            print(f"| {size_label} | {name} | {seconds * 1000:.0f} ms | {size / seconds / 1e9:.1f} | "
                  f"{note} |")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
