"""picklejail.load(f, mmap=True): tensors as views of the checkpoint file's own pages.

Checked against torch.load on the shipped fixtures and on files written here,
through the local sandbox (the `picklejail` command) and a real picklejaild.
Which tensors are views of the file is read from /proc/self/maps (the address
range the checkpoint is mapped at), and page sharing between processes from
/proc/<pid>/smaps, never from timing.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import picklejail  # noqa: E402
from picklejail import api as api_mod, mapped  # noqa: E402

from daemon_support import Daemon, Client, daemon_binary  # noqa: E402
from test_client import assert_same, manifest_cases, torch_has_dtypes  # noqa: E402

try:
    import torch
except ImportError:
    torch = None
try:
    import numpy as np
except ImportError:
    np = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (use /usr/bin/python3)")
needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not importable")


@pytest.fixture(autouse=True)
def local_sandbox_env(monkeypatch, tmp_path, picklejail_bin):
    """No stray system daemon; the local fallback uses the binary under test."""
    monkeypatch.setenv("PICKLEJAIL_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))


def file_mappings(path, pid="self"):
    """[(start, end)] address ranges at which `pid` maps the file `path`."""
    wanted = os.path.realpath(path)
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == wanted:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def in_file(tensor, ranges):
    pointer = tensor.data_ptr() if hasattr(tensor, "data_ptr") else \
        tensor.__array_interface__["data"][0]
    return any(start <= pointer < end for start, end in ranges)


def is_dense(tensor):
    """A strided, unquantized torch tensor."""
    return tensor.layout == torch.strided and not tensor.is_quantized


# loader/file_ranges.hpp kMinMappedBytes: smaller tensors are copied even with mmap=True.
MIN_MAPPED_BYTES = 4096


def nbytes(tensor):
    return tensor.numel() * tensor.element_size() if hasattr(tensor, "element_size") \
        else tensor.nbytes


def leaves(obj, prefix=""):
    if hasattr(obj, "dtype") and hasattr(obj, "shape") and not isinstance(obj, type):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{prefix}.{i}" if prefix else str(i))


# ---------------------------------------------------------------- shipped fixtures

@needs_torch
@pytest.mark.parametrize("ckpt,entry", manifest_cases("load"))
def test_fixture_mmap_matches_torch_load(ckpt, entry):
    if not torch_has_dtypes(entry):
        pytest.skip(f"this torch cannot read {ckpt.name} either")
    got = picklejail.load(ckpt, mmap=True)
    try:
        expected = torch.load(ckpt, weights_only=False)
    except ValueError as error:  # 1.13 cannot rebuild 2.x's four-item sparse COO form
        pytest.skip(f"this torch cannot read {ckpt.name}: {error}")
    assert_same(got, expected)
    ranges = file_mappings(ckpt)
    # Only dense tensors can be views of the file's records (sparse and quantized
    # tensors are rebuilt from their parts, which the client copies).
    dense = [(name, t) for name, t in leaves(got) if is_dense(t) and t.numel()]
    viewed = [name for name, t in dense if in_file(t, ranges)]
    small = {name for name, t in dense if nbytes(t) < MIN_MAPPED_BYTES}
    assert not small & set(viewed), f"{ckpt.name}: tensors below a page are copied"
    if zipfile.is_zipfile(ckpt) and "legacy" not in ckpt.name and len(small) < len(dense):
        assert viewed, f"{ckpt.name}: no tensor is a view of the file"
    elif not zipfile.is_zipfile(ckpt) or "legacy" in ckpt.name:
        assert not viewed, f"{ckpt.name} is not a zip: nothing can be mapped"


@needs_numpy
def test_numpy_backend_views_the_file():
    ckpt = FIXTURE_MIXED
    arrays = picklejail.load(ckpt, backend="numpy", mmap=True)
    copied = picklejail.load(ckpt, backend="numpy")
    ranges = file_mappings(ckpt)
    # Every tensor of a page or more is a view of the file, except the transposed
    # one (not contiguous in its record); the two below a page are copied.
    views = {name for name, a in leaves(arrays) if in_file(a, ranges)}
    assert views == {name for name, a in leaves(arrays)
                     if a.nbytes >= MIN_MAPPED_BYTES and name != "transposed"}
    for (name, a), (_, b) in zip(leaves(arrays), leaves(copied)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


FIXTURE_CNN = REPO / "tests" / "fixtures" / "torch-2.11" / "cnn_state_dict.pt"
# Tensors of every mapped dtype above a page, views, an alias and two tiny ones.
FIXTURE_MIXED = REPO / "tests" / "fixtures" / "mapped" / "mixed_large.pt"


# ---------------------------------------------------------------- files written here

def aligned_zip(src, dst, *, deflate=(), misalign=()):
    """Rewrite torch.save's archive `src` as `dst`: records named in `deflate` deflated,
    the others stored with their data 64-byte aligned, except those in `misalign`
    (shifted by 4 bytes). Pads with an extra field, as torch's writer does."""
    with zipfile.ZipFile(src) as zin, open(dst, "wb") as raw:
        with zipfile.ZipFile(raw, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                record = info.filename.split("/", 1)[1]
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                if record in deflate:
                    out.compress_type = zipfile.ZIP_DEFLATED
                else:
                    out.compress_type = zipfile.ZIP_STORED
                    base = raw.tell() + 30 + len(info.filename.encode()) + 4
                    pad = (-base) % 64 + (4 if record in misalign else 0)
                    out.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
                zout.writestr(out, data)


@needs_torch
def test_mixed_records_fall_back_per_tensor(tmp_path):
    state = {"stored": torch.arange(2048, dtype=torch.float32),
             "deflated": torch.arange(1024, dtype=torch.int64),
             "shifted": torch.ones(4096, dtype=torch.float16),
             "strided": torch.arange(4096, dtype=torch.float32).view(64, 64).t(),
             "tail_view": torch.arange(1024, dtype=torch.float64)[5:],
             "small": torch.arange(16, dtype=torch.float32)}
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    with zipfile.ZipFile(plain) as z:
        keys = {name.split("/")[-1]: name for name in z.namelist() if "/data/" in name}
    # Storage keys follow pickling order: stored 0, deflated 1, shifted 2, ...
    # ("small" is stored and aligned too, but below a page: copied)
    mixed = tmp_path / "mixed.pt"
    aligned_zip(plain, mixed, deflate={f"data/{sorted(keys)[1]}"},
                misalign={f"data/{sorted(keys)[2]}"})
    want = torch.load(mixed)
    got = picklejail.load(mixed, mmap=True)
    assert_same(got, want)
    ranges = file_mappings(mixed)
    assert {name for name, t in got.items() if in_file(t, ranges)} == {"stored", "tail_view"}
    # Copy-on-write: writing a mapped tensor changes neither the file nor another load.
    before = mixed.read_bytes()
    got["stored"].add_(1)
    assert mixed.read_bytes() == before
    assert torch.equal(picklejail.load(mixed, mmap=True)["stored"], state["stored"])


@needs_torch
def test_file_changed_after_the_check_is_refused(tmp_path, monkeypatch):
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1024)}, ckpt)
    real = api_mod.map_checked_file

    def rewrite_then_map(fd, identity):
        with open(ckpt, "r+b") as f:  # same inode and size, new bytes and times
            f.seek(-1, os.SEEK_END)
            f.write(b"\1")
        os.utime(ckpt, ns=(identity["mtime_ns"] + 10**9, identity["mtime_ns"] + 10**9))
        return real(fd, identity)

    monkeypatch.setattr(api_mod, "map_checked_file", rewrite_then_map)
    with pytest.raises(picklejail.IoError, match="changed after the sandbox checked it"):
        picklejail.load(ckpt, mmap=True)


def test_identity_and_ranges_are_checked(tmp_path):
    ckpt = tmp_path / "f.bin"
    ckpt.write_bytes(b"x" * 128)
    info = os.stat(ckpt)
    identity = {"dev": info.st_dev, "ino": info.st_ino, "size": 128,
                "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}
    with open(ckpt, "rb") as f:
        assert len(mapped.map_checked_file(f.fileno(), identity)) == 128
        with pytest.raises(picklejail.IoError, match="size 100 -> 128"):
            mapped.map_checked_file(f.fileno(), dict(identity, size=100))
    import json
    def meta(tensors):
        return {"picklejail.file_ranges": json.dumps({"file": identity, "tensors": tensors})}
    good = {"dtype": "F32", "shape": [2], "file_offsets": [64, 72]}
    _, entries = mapped.file_range_entries(meta({"t": good}), {})
    assert entries["t"].begin == 64 and entries["t"].shape == (2,)
    for bad, message in [
            (dict(good, file_offsets=[64, 76]), "12 bytes for F32"),
            (dict(good, file_offsets=[124, 132]), "outside the file"),
            (dict(good, file_offsets=[66, 74]), "not aligned"),
            (dict(good, dtype="F99"), "unknown dtype"),
            ({"dtype": "F32", "shape": [2]}, "exactly dtype, shape and file_offsets")]:
        with pytest.raises(picklejail.Malformed, match=message):
            mapped.file_range_entries(meta({"t": bad}), {})
    with pytest.raises(picklejail.Malformed, match="both in the image and mapped"):
        mapped.file_range_entries(meta({"t": good}), {"t": object()})


@needs_torch
def test_patch_torch_load_honours_mmap(tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.arange(1024.0)}, ckpt)
    with picklejail.patch_torch_load():
        mapped_load = torch.load(ckpt, mmap=True)
        ranges = file_mappings(ckpt)
        copied = torch.load(ckpt)
    assert in_file(mapped_load["w"], ranges) and not in_file(copied["w"], ranges)
    assert torch.equal(mapped_load["w"], copied["w"])


# ---------------------------------------------------------------- page cache sharing

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import picklejail
    state = picklejail.load(sys.argv[1], mmap=True, backend="numpy")   # numpy: a quick import
    total = sum(float(a.sum(dtype="float64")) for a in state.values())
    print(total, flush=True)
    sys.stdin.read()   # hold the mapping until the parent has looked
""")


def smaps_of(pid, path):
    """Summed smaps fields (kB) of `pid`'s mappings of `path`."""
    wanted, fields, inside = os.path.realpath(path), {}, False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) == 6 and head[5] == wanted
            elif inside and head[0].endswith(":") and len(head) == 3:
                fields[head[0][:-1]] = fields.get(head[0][:-1], 0) + int(head[1])
    return fields


@needs_torch
@needs_numpy
def test_eight_processes_share_one_copy_in_the_page_cache(tmp_path):
    ckpt = tmp_path / "shared.pt"
    torch.save({f"w{i}": torch.full((256, 1024), float(i)) for i in range(8)}, ckpt)  # 8 MiB
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt),
                                  str(REPO / "client" / "python")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=os.environ.copy()) for _ in range(8)]
    try:
        sums = [float(child.stdout.readline()) for child in children]
        assert sums == [sum(i * 256 * 1024 for i in range(8))] * 8
        for child in children:
            fields = smaps_of(child.pid, ckpt)
            assert fields.get("Rss", 0) >= 8 * 1024, f"{fields}: the tensors were not mapped"
            # Every resident page of the file is the page cache's, shared by all eight
            # (dirty while the new file is not yet written back): none private, no
            # copy-on-write copies, and each process is charged about an eighth of it.
            seen = str(sorted(fields.items()))
            assert fields["Private_Clean"] == fields["Private_Dirty"] == 0, seen
            assert fields["Anonymous"] == 0, seen
            assert fields["Shared_Clean"] + fields["Shared_Dirty"] == fields["Rss"], seen
            assert fields["Pss"] <= fields["Rss"] // 4, seen
    finally:
        for child in children:
            child.stdin.close()
            child.wait(timeout=60)


# ---------------------------------------------------------------- the daemon

@pytest.fixture
def daemon(tmp_path):
    if not daemon_binary().is_file():
        pytest.skip(f"picklejaild not built: {daemon_binary()}")
    d = Daemon(tmp_path, "--cache-bytes", 1 << 30)
    yield d
    d.stop()


@needs_torch
def test_daemon_mmap_load_and_its_own_cache_entry(daemon, tmp_path):
    ckpt = tmp_path / "model.pt"
    state = {"a": torch.randn(64, 64), "b": torch.arange(512)}
    torch.save(state, ckpt)
    copied = picklejail.load(ckpt, socket=daemon.socket_path)
    got = picklejail.load(ckpt, socket=daemon.socket_path, mmap=True)
    assert_same(got, torch.load(ckpt))
    ranges = file_mappings(ckpt)
    assert all(in_file(t, ranges) for t in got.values())
    assert not any(in_file(t, ranges) for t in copied.values())
    with Client(daemon.socket_path) as c, open(ckpt, "rb") as f:
        reply = c.request({"op": "load", "fd": True, "mmap": True}, fd=f.fileno())
        image_fd = c.fds.pop()
        os.close(image_fd)
        assert reply["cached"] is True and reply["tensors"] == 2
        refused = c.request({"op": "load", "path": str(ckpt), "mmap": True}, check=False)
        assert refused["error"]["code"] == "invalid_request"
        assert "needs \"fd\":true" in refused["error"]["message"]


# ---------------------------------------------------------------- reading the ranges

RANGE_IDENTITY = {"dev": 1, "ino": 2, "size": 4096, "mtime_ns": 3, "ctime_ns": 4}


def ranges_text(tensors, identity=RANGE_IDENTITY):
    """The file ranges laid out as the worker writes them (compact JSON)."""
    return json.dumps({"file": identity, "tensors": tensors}, separators=(",", ":"))


def both_paths(text, stored=None):
    """(fast result or None, general result or the Malformed it raised)."""
    stored = stored or {}
    fast = mapped._writer_range_entries(text, stored)
    try:
        general = mapped._general_range_entries(text, stored)
    except picklejail.Malformed as error:
        general = error
    return fast, general


def entry_tuples(result):
    identity, entries = result
    return identity, [(k, e.name, e.dtype, e.shape, e.begin, e.end, e.numel)
                      for k, e in entries.items()]


def rng(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "file_offsets": [begin, end]}


RANGE_CASES = {
    "plain": {"a": rng("F32", [2, 3], 64, 88), "b": rng("U8", [], 128, 129)},
    "escaped name": {"a\"b\\c\u00e9": rng("F16", [1], 64, 66)},
    "many": {f"layers.{i}.weight": rng("F32", [16], 64 * (i + 1), 64 * (i + 1) + 64)
             for i in range(50)},
    "none": {},
}
RANGE_FALLBACKS = {
    "spaces": json.dumps({"file": RANGE_IDENTITY, "tensors": {"a": rng("U8", [1], 64, 65)}}),
    "size mismatch": ranges_text({"a": rng("F32", [2], 64, 76)}),
    "outside the file": ranges_text({"a": rng("F32", [2], 4092, 4100)}),
    "not aligned": ranges_text({"a": rng("F32", [2], 66, 74)}),
    "empty range": ranges_text({"a": rng("F32", [0], 64, 64)}),
    "unknown dtype": ranges_text({"a": rng("F99", [2], 64, 72)}),
    "keys reordered": ranges_text({"a": {"shape": [1], "dtype": "U8", "file_offsets": [64, 65]}}),
    "brace for a comma": ranges_text({"a": rng("U8", [1], 64, 65), "b": rng("U8", [1], 65, 66)})
    .replace('},"b"', '}{"b"'),
    "repeated name": ranges_text({"a": rng("U8", [1], 64, 65)}).replace(
        '{"a":{"dtype":"U8","shape":[1],"file_offsets":[64,65]}',
        '{"a":{"dtype":"U8","shape":[1],"file_offsets":[64,65]},'
        '"a":{"dtype":"U8","shape":[1],"file_offsets":[66,67]}'),
    "trailing junk": ranges_text({"a": rng("U8", [1], 64, 65)}) + " ",
}


@pytest.mark.parametrize("case", RANGE_CASES)
def test_ranges_as_the_worker_writes_them_take_the_fast_path_with_the_same_result(case):
    fast, general = both_paths(ranges_text(RANGE_CASES[case]))
    assert fast is not None
    assert entry_tuples(fast) == entry_tuples(general)


@pytest.mark.parametrize("case", RANGE_FALLBACKS)
def test_range_near_misses_go_to_the_general_path(case):
    fast, _ = both_paths(RANGE_FALLBACKS[case])
    assert fast is None


def test_a_bad_identity_is_refused_alike_on_either_path():
    text = ranges_text({"a": rng("U8", [1], 64, 65)}, identity={"dev": 1})
    with pytest.raises(picklejail.Malformed, match="'file' must hold") as fast:
        mapped._writer_range_entries(text, {})
    with pytest.raises(picklejail.Malformed, match="'file' must hold") as general:
        mapped._general_range_entries(text, {})
    assert str(fast.value) == str(general.value)


def test_a_range_named_like_an_image_tensor_is_refused_by_either_path():
    text = ranges_text({"t": rng("F32", [2], 64, 72)})
    assert mapped._writer_range_entries(text, {"t": object()}) is None
    with pytest.raises(picklejail.Malformed, match="both in the image and mapped"):
        mapped.file_range_entries({"picklejail.file_ranges": text}, {"t": object()})


def test_the_workers_ranges_are_read_by_the_fast_path(monkeypatch):
    def general_path_taken(text, stored):
        raise AssertionError("the worker's file ranges did not match the fast path")
    monkeypatch.setattr(mapped, "_general_range_entries", general_path_taken)
    got = picklejail.load(FIXTURE_MIXED, backend="numpy", mmap=True)
    assert got
