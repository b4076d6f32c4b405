"""End-to-end checks of `picklejail convert` against PyTorch itself.

Each case writes a fresh checkpoint with torch.save, converts it, reads the
output with our own safetensors reader and compares it with what torch.load
gives for the same file. The security tests hand-build malicious pickles
(never unpickled) and need no torch; neither do the checks of the shipped
fixtures, which compare against their manifest.json hashes.
"""

import hashlib
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest

import safetensors_read

try:
    import torch
except ImportError:  # the torch-free tests below still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (use /usr/bin/python3)")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ---------------------------------------------------------------- helpers

def flatten(obj, prefix=""):
    """(name, tensor) pairs: nested dict keys and list/tuple indices joined by '.'."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}" if prefix else str(i))


def resolve(name, present, metadata):
    """The stored name holding `name`: itself, or the target of an alias in __metadata__."""
    if name in present:
        return name
    target = metadata.get(name)
    assert target is not None, f"tensor {name!r} is neither stored nor an alias in __metadata__"
    assert target in present, f"alias {name!r} -> {target!r}, which is not a stored tensor"
    return target


def same_values(a, b):
    try:
        return torch.equal(a, b)
    except RuntimeError:  # dtypes without an eq kernel (float8, uint16 in some versions): compare bits
        return bytes(a.contiguous().reshape(-1).view(torch.uint8)) == \
            bytes(b.contiguous().reshape(-1).view(torch.uint8))


def convert_ok(convert, src, dst):
    res = convert(src, dst)
    assert res.returncode == 0, f"convert failed ({res.returncode}):\n{res.stderr}"
    assert dst.is_file(), "convert exited 0 but wrote no output"
    return res


def assert_matches_torch(ckpt, out):
    """Every tensor torch.load finds in ckpt is in out with the same dtype, shape and values."""
    # Our own freshly written file: trusted, and weights_only=True would refuse protocol 4/5.
    expected = dict(flatten(torch.load(ckpt, weights_only=False)))
    assert expected, "test bug: the checkpoint holds no tensors"
    got, metadata = safetensors_read.load(out)

    assert metadata.get("format") == "pt", f"__metadata__ = {metadata}"
    assert set(got) <= set(expected), f"unexpected tensors in output: {set(got) - set(expected)}"
    for name, want in expected.items():
        have = got[resolve(name, got, metadata)]
        want = want.detach()
        if want.dtype == torch.complex128:  # no C128 in safetensors: F64 with a trailing 2
            want = torch.view_as_real(want)
        assert have.dtype == want.dtype, f"{name}: dtype {have.dtype}, torch says {want.dtype}"
        assert have.shape == want.shape, f"{name}: shape {tuple(have.shape)}, torch says {tuple(want.shape)}"
        assert same_values(have, want), f"{name}: values differ"


# ---------------------------------------------------------------- generated checkpoints

def mixed_dtypes():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64) * 8
    d = {str(dt).split(".")[1]: x.to(dt) for dt in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8)}
    d["uint8"] = x.abs().to(torch.uint8)
    d["bool"] = x > 0
    d["complex64"] = torch.complex(x.float(), -x.float())
    d["complex128"] = torch.complex(x, x * 0.5)
    d["scalar_i64"] = torch.tensor(7)
    d["empty_f32"] = torch.zeros(0, 3)
    # Newer torch only: exercised when the suite runs under torch >= 2.3.
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            d[name] = x.float().to(getattr(torch, name))
    for name in ("uint16", "uint32", "uint64"):
        if hasattr(torch, name):
            d[name] = x.abs().to(torch.int64).to(getattr(torch, name))
    return d


def views():
    full = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    return {
        "full": full,
        "tied": full,  # same object: may come out once plus an alias
        "row3": full[3],
        "col2": full[:, 2],
        "t": full.t(),
        "block": full[2:5, 1:7],
        "step": full[::2, ::3],
        "expanded": full[0, :3].expand(4, 3),
        "scalar": full[1, 1],  # 0-d view with a storage offset
        "empty": full[8:],  # zero rows, same storage
    }


def small_cnn():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(288, 10))


def training_checkpoint():
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    return {
        "epoch": 3,
        "best_loss": 0.25,
        "name": "run",
        "flags": [True, None],
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),  # integer keys, 0-d step tensors
        "history": [torch.tensor([1.0, 0.5]), (torch.ones(2, 2),)],
    }


def legacy_with_views():
    full = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    return {"model": small_cnn().state_dict(), "a": full, "b": full[1:3], "t": full.t(),
            "bf16": full.to(torch.bfloat16), "c128": torch.complex(full.double(), -full.double())}


def protocol_payload():
    torch.manual_seed(3)
    return {"w": torch.randn(5, 5), "n": list(range(300)), "s": "x" * 300, "i": torch.arange(4)}


def parameters():
    lin = torch.nn.Linear(4, 3)
    return {"weight": lin.weight, "bias": lin.bias, "buf": torch.zeros(2, requires_grad=True)}


def list_top():
    return [torch.ones(2), (torch.zeros(3), {"k": torch.eye(2)}), [torch.arange(3)]]


def large_state_dict():
    """About 48 MB: enough verbatim bytes that the worker's copy thread takes a share
    (split at a page boundary inside a tensor), with views from inside storages."""
    g = torch.Generator().manual_seed(4)
    big = torch.randn(4_000_001, generator=g)  # odd length: later tensors start unaligned
    wide = torch.randn(1024, 4096, generator=g)
    return {"big": big, "small": torch.randn(10, generator=g), "wide": wide,
            "inner": big[12_345:2_012_345], "rows": wide[100:900], "wide_t": wide.t(),
            "square": torch.randn(2048, 2048, generator=g).to(torch.float64)}


# name -> (builder, torch.save keyword arguments)
CASES = {
    "large_parallel_copy": (large_state_dict, {}),
    "large_legacy_format": (large_state_dict, {"_use_new_zipfile_serialization": False}),
    "mixed_dtypes": (mixed_dtypes, {}),
    "views": (views, {}),
    "training_checkpoint": (training_checkpoint, {}),
    "legacy_format": (legacy_with_views, {"_use_new_zipfile_serialization": False}),
    "protocol4": (protocol_payload, {"pickle_protocol": 4}),
    "protocol5": (protocol_payload, {"pickle_protocol": 5}),
    "module_state_dict": (lambda: small_cnn().state_dict(), {}),  # an OrderedDict
    "parameters": (parameters, {}),
    "list_top": (list_top, {}),
}


@needs_torch
@pytest.mark.parametrize("case", CASES)
def test_matches_torch_load(case, tmp_path, convert):
    build, save_kwargs = CASES[case]
    ckpt, out = tmp_path / f"{case}.pt", tmp_path / f"{case}.safetensors"
    torch.save(build(), ckpt, **save_kwargs)
    convert_ok(convert, ckpt, out)
    assert_matches_torch(ckpt, out)


@needs_torch
def test_views_come_out_contiguous(tmp_path, convert):
    """Views must be materialized, not stored as their whole underlying storage."""
    ckpt, out = tmp_path / "views.pt", tmp_path / "views.safetensors"
    torch.save(views(), ckpt)
    convert_ok(convert, ckpt, out)
    entries, metadata = safetensors_read.read_raw(out)
    full = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    for name, want in [("t", full.t()), ("col2", full[:, 2]), ("expanded", full[0, :3].expand(4, 3))]:
        _, _, raw = entries[resolve(name, entries, metadata)]
        assert raw == want.contiguous().numpy().tobytes(), name


# ---------------------------------------------------------------- shipped fixtures (no torch)

def _manifest_cases(expect):
    for manifest in sorted(FIXTURES.glob("torch-*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            if entry["expect"] == expect:
                yield pytest.param(manifest.parent / entry["file"], entry,
                                   id=f"{manifest.parent.name}/{entry['file']}")


@pytest.mark.parametrize("ckpt,entry", _manifest_cases("load"))
def test_shipped_fixture_matches_manifest(ckpt, entry, tmp_path, convert):
    out = tmp_path / "out.safetensors"
    convert_ok(convert, ckpt, out)
    entries, metadata = safetensors_read.read_raw(out)
    assert metadata.get("format") == "pt", f"__metadata__ = {metadata}"
    assert set(entries) <= set(entry["tensors"]), f"unexpected: {set(entries) - set(entry['tensors'])}"
    for name, want in entry["tensors"].items():
        dtype, shape, raw = entries[resolve(name, entries, metadata)]
        want_dtype, want_shape = want["dtype"], want["shape"]
        if want_dtype == "C128":
            want_dtype, want_shape = "F64", want_shape + [2]
        assert (dtype, shape) == (want_dtype, want_shape), name
        assert hashlib.sha256(raw).hexdigest() == want["sha256"], f"{name}: bytes differ"


# ---------------------------------------------------------------- malicious input (no torch)

def reduce_os_system(command):
    """Protocol-2 pickle bytes for os.system(command), assembled by hand.

    GLOBAL 'os system'; BINPUT; BINUNICODE command; BINPUT; TUPLE1; BINPUT; REDUCE; BINPUT; STOP.
    """
    cmd = command.encode()
    return (b"\x80\x02cos\nsystem\nq\x00"
            + b"X" + struct.pack("<I", len(cmd)) + cmd
            + b"q\x01\x85q\x02Rq\x03.")


def as_torch_zip(pkl):
    """The same payload where a real checkpoint keeps its pickle: archive/data.pkl."""
    def write(path):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/version", "3\n")
    return write


def as_legacy(pkl):
    """Legacy (non-zip) torch layout: magic, protocol version, sys_info pickles, then the object."""
    # Dumping plain ints/dicts is harmless; nothing here is ever unpickled.
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}}))

    def write(path):
        path.write_bytes(head + pkl)
    return write


CONTAINERS = {
    "raw_pickle": lambda pkl: (lambda path: path.write_bytes(pkl)),
    "torch_zip": as_torch_zip,
    "legacy": as_legacy,
}


@pytest.mark.parametrize("container", CONTAINERS)
def test_refuses_os_system(container, tmp_path, convert):
    canary = tmp_path / "PWNED"
    src, out = tmp_path / "evil.pt", tmp_path / "evil.safetensors"
    CONTAINERS[container](reduce_os_system(f"touch {canary}"))(src)

    res = convert(src, out)
    assert res.returncode != 0, f"malicious pickle converted (stdout: {res.stdout!r})"
    assert re.search(r"\b(os|posix)\.system\b", res.stderr), f"stderr does not name the global:\n{res.stderr}"
    assert not canary.exists(), "the payload ran"
    assert not out.exists(), "a refused conversion must not leave an output file"
