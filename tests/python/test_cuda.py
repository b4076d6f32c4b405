"""The CUDA path (client/python/picklejail/cuda.py, cuda_plan.py).

Everything but the DMA runs on any machine: the plans (offsets, alignment,
spans, ring chunks), every map_location form, and the whole pipeline (ring
fills by threads, registrations kept and released, views of one allocation)
with host memory as the destination (cuda.HostEngine), compared with
torch.load. The tests that need a CUDA device skip, saying so, where there is
none; on a GPU host they compare picklejail.load(map_location=cuda...) with
torch.load(map_location=...) for every strategy.

Run with Debian's interpreter (torch 1.13):
    PICKLEJAIL_BIN=build/bin/picklejail /usr/bin/python3 -m pytest tests/python/test_cuda.py
"""

import mmap
import os
import random
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import picklejail  # noqa: E402
from picklejail import cuda, cuda_plan  # noqa: E402
from picklejail.dtypes import COMPLEX128, DTYPES  # noqa: E402
from picklejail.image import TensorEntry  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (use /usr/bin/python3)")
HAS_CUDA = torch is not None and torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this host "
                                "(torch.cuda.is_available() is False)")


def entries(*specs):
    """TensorEntries back to back: specs are (name, safetensors dtype or COMPLEX128, numel)."""
    out, position = [], 0
    for name, dtype, numel in specs:
        dtype = COMPLEX128 if dtype == "C128" else DTYPES[dtype]
        out.append(TensorEntry(name, dtype, (numel,), position, position + numel * dtype.size,
                               numel))
        position += numel * dtype.size
    return out


# ---------------------------------------------------------------- plans

def check_plan(plan, planned):
    """What every plan must satisfy, whatever its input."""
    by_name = {p.entry.name: p for p in plan.placed}
    assert [p.entry.name for p in plan.placed] == [e.name for e in planned]
    covered = []
    for span in plan.spans:
        assert span.dst % cuda_plan.MIN_ALIGNMENT == 0
        first = next(p.entry for p in plan.placed if p.dst == span.dst and p.entry.end > p.entry.begin)
        if first.end - first.begin >= cuda_plan.SMALL_TENSOR_BYTES:
            assert span.dst % cuda_plan.SPAN_ALIGNMENT == 0
        assert span.dst + span.length <= plan.allocation_bytes
        covered.append((span.src, span.src + span.length))
    for a, b in zip(plan.spans, plan.spans[1:]):  # disjoint, in order, on both sides
        assert a.src + a.length <= b.src and a.dst + a.length <= b.dst
    for entry in planned:
        placed = by_name[entry.name]
        length = entry.end - entry.begin
        if length == 0:
            continue
        assert placed.dst % entry.dtype.size == 0, f"{entry.name} misaligned for view(dtype)"
        assert placed.dst + length <= plan.allocation_bytes
        # Its bytes are inside exactly one span, at the matching offset.
        inside = [s for s in plan.spans if s.src <= entry.begin and entry.end <= s.src + s.length]
        assert len(inside) == 1
        assert placed.dst - inside[0].dst == entry.begin - inside[0].src
    assert plan.copy_bytes == sum(e.end - e.begin for e in planned)


def test_one_device_whole_image_is_one_span():
    planned = entries(("a", "F64", 3), ("b", "F32", 5), ("c", "F16", 7), ("d", "U8", 1))
    plan = cuda_plan.plan_device("cuda:0", planned)
    check_plan(plan, planned)
    assert plan.spans == (cuda_plan.Span(0, 0, planned[-1].end),)
    assert [p.dst for p in plan.placed] == [e.begin for e in planned]
    assert plan.allocation_bytes == planned[-1].end


def test_interleaved_devices_pack_their_tensors_aligned():
    planned = entries(*[(f"t{i}", ("F32", "F16", "U8", "I64")[i % 4], 1 + i) for i in range(40)])
    groups = cuda_plan.group_by_device(
        planned, lambda e: ("cuda:0", "cuda:1", "cpu")[int(e.name[1:]) % 3])
    assert set(groups) == {"cuda:0", "cuda:1"}
    for device, group in groups.items():
        plan = cuda_plan.plan_device(device, group)
        check_plan(plan, group)
        assert len(plan.spans) == len(group)  # no two neighbours in the image go to one device
        # Packed, not laid out as in the image: at most the alignment of each span is padding.
        assert plan.allocation_bytes <= plan.copy_bytes + (cuda_plan.MIN_ALIGNMENT - 1) * len(plan.spans)
        assert plan.allocation_bytes < group[-1].end


def test_large_tensors_start_at_the_full_alignment():
    small, gap, big, tiny = entries(("small", "U8", 3), ("gap", "U8", 5), ("big", "F32", 4096),
                                    ("tiny", "U8", 1))
    plan = cuda_plan.plan_device("cuda:0", [small, big, tiny])  # gap stays on the CPU
    check_plan(plan, [small, big, tiny])
    assert [p.dst for p in plan.placed] == [0, 256, 256 + 4 * 4096]  # tiny joins big's span
    assert len(plan.spans) == 2


def test_misaligned_complex128_starts_a_span_of_its_own():
    planned = entries(("odd", "F64", 3), ("z", "C128", 2), ("after", "F64", 1))
    assert planned[1].begin % 16 == 8  # where the writer's order (as F64) puts it
    plan = cuda_plan.plan_device("cuda:0", planned)
    check_plan(plan, planned)
    assert len(plan.spans) == 2


def test_empty_tensors_take_no_bytes():
    planned = entries(("a", "F32", 4), ("empty", "F32", 0), ("b", "F32", 4))
    plan = cuda_plan.plan_device("cuda:0", planned)
    check_plan(plan, planned)
    assert plan.spans == (cuda_plan.Span(0, 0, 32),)


def test_random_plans_hold_their_invariants():
    rng = random.Random(17)
    names = list(DTYPES) + ["C128"]
    for _ in range(200):
        planned = entries(*[(f"t{i}", rng.choice(names), rng.randrange(0, 50))
                            for i in range(rng.randrange(1, 30))])
        group = [e for e in planned if rng.random() < 0.7] or planned
        check_plan(cuda_plan.plan_device("cuda:0", group), group)


def test_chunk_plan_covers_every_span_once_within_slots():
    rng = random.Random(3)
    for chunk in (256, 4096, 1 << 20):
        spans, src, dst = [], 0, 0
        for _ in range(rng.randrange(1, 40)):
            length = rng.randrange(1, 3 * chunk)
            src += rng.randrange(0, 100)
            dst = cuda_plan.align_up(dst, 256)
            spans.append(cuda_plan.Span(src, dst, length))
            src += length
            dst += length
        pieces = [p for c in cuda_plan.chunk_plan(spans, chunk) for p in c]
        for c in cuda_plan.chunk_plan(spans, chunk):
            for a, b in zip(c, c[1:]):
                assert a.slot_offset + a.length <= b.slot_offset
            assert all(p.slot_offset % 256 == 0 and p.slot_offset + p.length <= chunk for p in c)
        rebuilt = {}
        for piece in pieces:
            assert piece.dst - piece.src == next(s.dst - s.src for s in spans
                                                 if s.src <= piece.src < s.src + s.length)
            rebuilt.setdefault(piece.src - piece.dst, []).append(piece)
        assert sum(p.length for p in pieces) == sum(s.length for s in spans)
    with pytest.raises(ValueError):
        cuda_plan.chunk_plan([], 1000)


def test_a_large_span_fills_whole_slots():
    chunks = cuda_plan.chunk_plan([cuda_plan.Span(0, 0, 10 * 4096 + 5)], 4096)
    assert len(chunks) == 11 and all(len(c) == 1 for c in chunks)
    assert [c[0].length for c in chunks] == [4096] * 10 + [5]


def test_split_evenly():
    assert cuda_plan.split_evenly(0, 4) == []
    assert cuda_plan.split_evenly(100, 4) == [(0, 100)]
    runs = cuda_plan.split_evenly(10 * 4096 + 1, 4)
    assert len(runs) == 4 and all(offset % 4096 == 0 for offset, _ in runs)
    assert sum(length for _, length in runs) == 10 * 4096 + 1


def test_memfd_identity_of_a_real_mapping():
    fd = os.memfd_create("picklejail-image")
    try:
        os.ftruncate(fd, 8192)
        mapping = mmap.mmap(fd, 8192, flags=mmap.MAP_PRIVATE)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    address = __import__("ctypes").addressof(__import__("ctypes").c_char.from_buffer(mapping))
    with open("/proc/self/maps") as maps:
        text = maps.read()
    identity = cuda_plan.memfd_identity(text, address + 4096)
    assert identity == ((os.major(info.st_dev), os.minor(info.st_dev)), info.st_ino)
    assert cuda_plan.memfd_identity(text, id(text)) is None  # the heap is no memfd
    del identity
    mapping.close()


def test_choose_strategy():
    options = cuda.CudaOptions()
    assert cuda.choose_strategy(options, 1 << 10, False, True) == "pageable"
    assert cuda.choose_strategy(options, 1 << 30, False, True) == "ring"
    assert cuda.choose_strategy(options, 1 << 30, True, True) == "register"
    keeping = cuda.CudaOptions(keep_registered_bytes=2 << 30)
    assert cuda.choose_strategy(keeping, 1 << 30, False, True) == "register"
    assert cuda.choose_strategy(keeping, 1 << 30, False, False) == "ring"
    assert cuda.choose_strategy(cuda.CudaOptions(strategy="ring"), 1, True, True) == "ring"
    with pytest.raises(ValueError):
        cuda.CudaOptions(strategy="fast")
    with pytest.raises(ValueError):
        cuda.CudaOptions(ring_chunk_bytes=1000)


# ---------------------------------------------------------------- the pipeline on host memory

@pytest.fixture
def local_only(monkeypatch, tmp_path, picklejail_bin):
    monkeypatch.setenv("PICKLEJAIL_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))


@pytest.fixture
def host_loader(monkeypatch):
    """The process's CUDA loader replaced by one whose destination is host memory."""
    def install(**options):
        loader = cuda.CudaLoader(torch, cuda.CudaOptions(**options), engine=cuda.HostEngine(torch))
        monkeypatch.setitem(cuda._shared, "loader", loader)
        return loader
    yield install
    loader = cuda._shared.get("loader")
    if loader is not None:
        loader.close()


def rich_state(path):
    from test_client import rich_object, save
    obj = rich_object()
    obj["many"] = {f"w{i}": torch.randn(i + 1) for i in range(50)}  # several ring chunks
    obj["z_after_odd"] = [torch.ones(3, dtype=torch.float64),
                          torch.complex(torch.ones(2).double(), torch.zeros(2).double())]
    return save(obj, path)


# Every form torch.load takes that names a CUDA device for tensors saved on the CPU.
MAP_LOCATIONS_TO_CUDA = {
    "str": lambda: "cuda",
    "str_index": lambda: "cuda:1",
    "device": lambda: torch.device("cuda"),
    "device_index": lambda: torch.device("cuda", 1),
    "dict": lambda: {"cpu": "cuda:1"},
    "dict_device": lambda: {"cpu": torch.device("cuda:0")},
    # A callable gets each storage and its saved location and returns the
    # storage where it should live: only its device is used (backends.Placement).
    # No CUDA storage can exist on this host, so the callable returns a stand-in
    # carrying the device such a storage would have; test_cuda_matches_torch_load
    # passes the real `storage.cuda(0)` on a GPU host.
    "callable": lambda: (lambda storage, location: types.SimpleNamespace(
        device=torch.device("cuda:1"))),
}


@needs_torch
@pytest.mark.parametrize("form", MAP_LOCATIONS_TO_CUDA)
@pytest.mark.parametrize("strategy", ["ring", "register", "pageable"])
def test_pipeline_on_host_memory_matches_torch_load(form, strategy, tmp_path, local_only,
                                                    host_loader):
    from test_client import Same
    loader = host_loader(strategy=strategy, ring_chunk_bytes=4096, ring_slots=2, fill_threads=3)
    path = rich_state(tmp_path / "rich.pt")
    got = picklejail.load(path, map_location=MAP_LOCATIONS_TO_CUDA[form]())
    assert loader.last_strategy == strategy
    Same().check(got, torch.load(path, map_location="cpu"))
    # Every tensor is a view of the one allocation.
    storages = {t.storage().data_ptr() for t in all_tensors(got) if t.numel()}
    assert len(storages) == 1
    assert loader._engine.registered == {}  # nothing left registered


def all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from all_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from all_tensors(value)


@needs_torch
def test_only_the_mapped_location_moves(tmp_path, local_only, host_loader):
    host_loader(strategy="ring")
    from test_client import save
    path = save({"a": torch.ones(3), "b": torch.arange(4)}, tmp_path / "two.pt")
    got = picklejail.load(path, map_location={"cuda:0": "cuda:1"})  # saved on the CPU: stays
    assert cuda._shared["loader"].last_strategy is None
    assert all(t.device == torch.device("cpu") for t in got.values())


@needs_torch
def test_kept_registration_is_reused_for_the_same_memfd(tmp_path, host_loader, local_only):
    """Two loads of one sealed memfd (what a caching daemon hands out) register it once."""
    loader = host_loader(keep_registered_bytes=1 << 30, pageable_below_bytes=0)
    from picklejail.image import parse_image
    from test_client import save
    path = save({f"w{i}": torch.randn(100, 100) for i in range(20)}, tmp_path / "w.pt")
    image_bytes = convert_to_bytes(path, tmp_path)
    fd = memfd_holding(image_bytes)
    try:
        targets = lambda entry: "cuda:0"  # noqa: E731
        first = parse_image(map_private(fd, len(image_bytes)), len(image_bytes))
        one = loader.place(first, targets)
        assert loader.last_strategy == "register" and len(loader._engine.registered) == 1
        second = parse_image(map_private(fd, len(image_bytes)), len(image_bytes))
        two = loader.place(second, targets)
        assert loader.last_strategy == "register" and len(loader._engine.registered) == 1
        for name in one:
            assert torch.equal(one[name], two[name])
        other = memfd_holding(image_bytes)  # same bytes, another memfd: a second registration
        try:
            loader.place(parse_image(map_private(other, len(image_bytes)), len(image_bytes)),
                         targets)
        finally:
            os.close(other)
        assert len(loader._engine.registered) == 2
        loader.close()
        assert loader._engine.registered == {}
    finally:
        os.close(fd)


@needs_torch
def test_an_image_that_is_no_memfd_is_not_registered_to_be_kept(tmp_path, host_loader, local_only):
    """Anonymous memory (the shm and inline transports copy into it) cannot be found again."""
    from picklejail.image import parse_image
    from picklejail.memory import copy_fd_to_private
    from test_client import save
    loader = host_loader(keep_registered_bytes=1 << 30, pageable_below_bytes=0)
    path = save({"w": torch.randn(300, 300)}, tmp_path / "w.pt")
    image_bytes = convert_to_bytes(path, tmp_path)
    fd = memfd_holding(image_bytes)
    try:
        anonymous = copy_fd_to_private(fd, len(image_bytes))
    finally:
        os.close(fd)
    got = loader.place(parse_image(anonymous, len(image_bytes)), lambda entry: "cuda:0")
    assert loader.last_strategy == "ring" and loader._engine.registered == {}
    assert torch.equal(got["w"], torch.load(path)["w"])


@needs_torch
def test_kept_registrations_stay_within_their_budget(tmp_path, host_loader, local_only):
    from picklejail.image import parse_image
    from test_client import save
    path = save({"w": torch.randn(300, 300)}, tmp_path / "w.pt")
    image_bytes = convert_to_bytes(path, tmp_path)
    loader = host_loader(keep_registered_bytes=len(image_bytes) + 100, pageable_below_bytes=0)
    fds = [memfd_holding(image_bytes) for _ in range(3)]
    try:
        for fd in fds:
            loader.place(parse_image(map_private(fd, len(image_bytes)), len(image_bytes)),
                         lambda entry: "cuda:0")
            assert len(loader._engine.registered) == 1  # the older one was unregistered
    finally:
        for fd in fds:
            os.close(fd)


def convert_to_bytes(path, tmp_path):
    out = tmp_path / (path.stem + ".safetensors")
    picklejail.convert(path, out, socket=False)
    return out.read_bytes()


def memfd_holding(data):
    fd = os.memfd_create("picklejail-test-image", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    return fd


def map_private(fd, size):
    return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


# ---------------------------------------------------------------- on a CUDA device

@needs_cuda
@pytest.mark.parametrize("strategy", ["ring", "register", "pageable", "auto"])
@pytest.mark.parametrize("form", ["cuda", "cuda:0", "device", "dict", "callable"])
def test_cuda_matches_torch_load(strategy, form, tmp_path, local_only):
    from test_client import Same
    location = {"cuda": "cuda", "cuda:0": "cuda:0", "device": torch.device("cuda", 0),
                "dict": {"cpu": "cuda:0"},
                "callable": lambda storage, loc: storage.cuda(0)}[form]
    cuda.set_shared_options(torch, cuda.CudaOptions(strategy=strategy, ring_chunk_bytes=1 << 20))
    try:
        path = rich_state(tmp_path / "rich.pt")
        got = picklejail.load(path, map_location=location)
        Same().check(got, torch.load(path, map_location=location))
        assert all(t.is_cuda for t in all_tensors(got))
    finally:
        cuda.set_shared_options(torch, cuda.CudaOptions())


@needs_cuda
def test_cuda_kept_registration_loads_the_cached_memfd_again(tmp_path, local_only):
    from picklejail.image import parse_image
    from test_client import save
    path = save({f"w{i}": torch.randn(256, 256) for i in range(16)}, tmp_path / "w.pt")
    image_bytes = convert_to_bytes(path, tmp_path)
    loader = cuda.CudaLoader(torch, cuda.CudaOptions(keep_registered_bytes=1 << 30))
    fd = memfd_holding(image_bytes)
    try:
        for _ in range(2):
            image = parse_image(map_private(fd, len(image_bytes)), len(image_bytes))
            got = loader.place(image, lambda entry: "cuda:0")
            assert loader.last_strategy in ("register", "ring")  # ring where read-only
            want = torch.load(path, map_location="cuda:0")      # registration is unsupported
            for name, tensor in want.items():
                assert torch.equal(got[name], tensor)
    finally:
        loader.close()
        os.close(fd)
