"""The Python client (client/python/picklejail) against torch.load itself.

Run with Debian's interpreter (torch 1.13):
    PICKLEJAIL_BIN=build/bin/picklejail /usr/bin/python3 -m pytest tests/python/test_client.py

The package is imported from client/python (no installation needed); one test
installs it into a throw-away venv to prove that works offline. Local-mode
tests point $PICKLEJAIL_SOCKET at a path where nothing listens, so the client
falls back to the `picklejail` command. Daemon-mode tests run against a fake
daemon in this process (client_fake_daemon.py, backed by the same command,
able to misbehave) and against build/bin/picklejaild when it is built.

Every checkpoint compared with torch.load here is either a shipped fixture or
written by this test: trusted files. Malicious pickles are assembled as bytes
and never unpickled.
"""

import argparse
import collections
import importlib.util
import io
import json
import os
import pickle
import shutil
import socket as socketlib
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import picklejail  # noqa: E402
from picklejail import backends, image as image_mod, memory, rebuild as rebuild_mod  # noqa: E402
from picklejail.transport import DaemonConnection  # noqa: E402

import safetensors_read  # noqa: E402
from client_fake_daemon import FakeDaemon  # noqa: E402

try:
    import torch
    from tensor_kinds_compare import assert_same_kind, is_other_kind
except ImportError:
    torch = None
try:
    import numpy as np
except ImportError:
    np = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (use /usr/bin/python3)")
needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not importable")
BACKEND = "torch" if torch is not None else "numpy"  # for tests about errors, not values

FIXTURES = REPO / "tests" / "fixtures"
DAEMON_BIN = REPO / "build" / "bin" / "picklejaild"
POLICY_DIR = REPO / "build" / "share" / "picklejail" / "policies"
TRANSPORTS = ("memfd", "shm", "inline")


@pytest.fixture(autouse=True)
def local_sandbox_env(monkeypatch, tmp_path, picklejail_bin):
    """No stray system daemon; the local fallback uses the binary under test."""
    monkeypatch.setenv("PICKLEJAIL_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))


# ---------------------------------------------------------------- comparison helpers

def tensor_bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def float_bits(x):
    return struct.pack("<d", x)


class Same:
    """Structural equality with torch.load's result, down to tensor identity."""

    def __init__(self):
        self.got_for = {}   # id(wanted tensor) -> the tensor we got for it
        self.want_for = {}  # id(got tensor) -> id(wanted tensor)

    def check(self, got, want, path="<root>"):
        assert type(got) is type(want), \
            f"{path}: {type(got).__name__}, torch gives {type(want).__name__}"
        if torch is not None and isinstance(want, torch.Tensor):
            self.tensor(got, want, path)
        elif isinstance(want, dict):
            assert [(type(k), k) for k in got] == [(type(k), k) for k in want], f"{path}: keys differ"
            for key in want:
                self.check(got[key], want[key], f"{path}.{key}")
            if hasattr(want, "__dict__"):  # OrderedDict: _metadata and any other attribute
                assert sorted(vars(got)) == sorted(vars(want)), f"{path}: attributes differ"
                for name in vars(want):
                    self.check(getattr(got, name), getattr(want, name), f"{path}@{name}")
        elif isinstance(want, (list, tuple)):
            assert len(got) == len(want), f"{path}: length {len(got)} vs {len(want)}"
            for i, (g, w) in enumerate(zip(got, want)):
                self.check(g, w, f"{path}.{i}")
        elif isinstance(want, float):
            assert float_bits(got) == float_bits(want), f"{path}: {got!r} vs {want!r}"
        elif isinstance(want, complex):
            assert float_bits(got.real) + float_bits(got.imag) == \
                float_bits(want.real) + float_bits(want.imag), f"{path}: {got!r} vs {want!r}"
        elif isinstance(want, argparse.Namespace):
            self.check(vars(got), vars(want), path)
        else:
            assert got == want, f"{path}: {got!r} vs {want!r}"

    def tensor(self, got, want, path):
        if is_other_kind(want):  # sparse, quantized, meta
            assert_same_kind(got, want, path)
            return
        if id(want) in self.got_for:
            assert got is self.got_for[id(want)], f"{path}: torch gives the same tensor object as before"
        else:
            assert id(got) not in self.want_for, f"{path}: one object where torch has two"
            self.got_for[id(want)] = got
            self.want_for[id(got)] = id(want)
        assert got.dtype == want.dtype, f"{path}: dtype {got.dtype} vs {want.dtype}"
        assert got.shape == want.shape, f"{path}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
        assert got.requires_grad == want.requires_grad, f"{path}: requires_grad differs"
        assert got.device == want.device, f"{path}: device {got.device} vs {want.device}"
        assert tensor_bits(got) == tensor_bits(want), f"{path}: values differ"


def assert_same(got, want):
    Same().check(got, want)


def flatten(obj, prefix=""):
    """(name, leaf) for tensors/arrays, named like picklejail names them."""
    if hasattr(obj, "dtype") and hasattr(obj, "shape") and not isinstance(obj, type):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif hasattr(obj, "_fields"):  # picklejail.tensor_kinds' named tuples: their arrays
        for field in obj._fields:
            if hasattr(getattr(obj, field), "shape"):
                yield from flatten(getattr(obj, field), f"{prefix}.{field}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}" if prefix else str(i))


def manifest_cases(expect):
    for manifest in sorted(FIXTURES.glob("torch-*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            if entry["expect"] == expect:
                yield pytest.param(manifest.parent / entry["file"], entry,
                                   id=f"{manifest.parent.name}/{entry['file']}")


TORCH_NAMES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
               "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16",
               "BF16": "bfloat16", "F32": "float32", "F64": "float64", "C64": "complex64",
               "C128": "complex128", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def torch_has_dtypes(entry):
    return all(isinstance(getattr(torch, TORCH_NAMES[t["dtype"]], None), torch.dtype)
               for t in entry["tensors"].values())


# ---------------------------------------------------------------- shipped fixtures

@needs_torch
@pytest.mark.parametrize("ckpt,entry", manifest_cases("load"))
def test_fixture_matches_torch_load(ckpt, entry):
    if not torch_has_dtypes(entry):
        # This torch cannot read the file either; picklejail says why, naming the dtype.
        with pytest.raises(picklejail.Unsupported, match="does not have"):
            picklejail.load(ckpt)
        return
    try:
        want = torch.load(ckpt, weights_only=False)
    except ValueError:  # torch 1.13 cannot unpack torch 2.x's 4-item sparse COO form
        assert entry["file"] == "sparse.pt" and torch.__version__ < "2"
        got = picklejail.load(ckpt)["s"]
        assert got.is_sparse and got.is_coalesced()  # torch 2.11 saved it coalesced
        return
    assert_same(picklejail.load(ckpt), want)


@needs_numpy
@pytest.mark.parametrize("ckpt,entry", manifest_cases("load"))
def test_fixture_numpy_backend_matches_manifest(ckpt, entry):
    import hashlib

    got = dict(flatten(picklejail.load(ckpt, backend="numpy")))
    assert set(got) == set(entry["tensors"])
    raw = {"BF16": "uint16", "F8_E4M3": "uint8", "F8_E5M2": "uint8"}
    for name, want in entry["tensors"].items():
        array = got[name]
        assert isinstance(array, np.ndarray), name
        assert array.dtype.name == raw.get(want["dtype"], TORCH_NAMES[want["dtype"]]), name
        assert list(array.shape) == want["shape"], name
        assert hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() == want["sha256"], name


REJECT_CODES = {
    "whole_module.pt": (picklejail.ForbiddenGlobal, "torch.nn.modules.container.Sequential"),
    "argparse_namespace.pt": (picklejail.ForbiddenGlobal, "argparse.Namespace"),
    "numpy_scalar.pt": (picklejail.ForbiddenGlobal, "multiarray.scalar"),
    "numpy_array.pt": (picklejail.ForbiddenGlobal, "multiarray._reconstruct"),
    "torchscript.pt": (picklejail.Unsupported, "TorchScript"),
}


@pytest.mark.parametrize("ckpt,entry", manifest_cases("reject"))
def test_fixture_rejected_with_its_code(ckpt, entry):
    cls, detail = REJECT_CODES[entry["file"]]
    with pytest.raises(cls) as caught:
        picklejail.load(ckpt, backend=BACKEND)
    assert detail in str(caught.value)
    assert caught.value.code == cls.code
    assert "local sandbox (picklejail convert)" in str(caught.value)
    if cls is picklejail.ForbiddenGlobal:
        assert caught.value.global_name and caught.value.global_name.endswith(detail)


@needs_torch
@pytest.mark.parametrize("version", ["torch-1.13", "torch-2.11"])
def test_checkpoint_policy_objects(version):
    folder = FIXTURES / version
    namespace = picklejail.load(folder / "argparse_namespace.pt", policy="checkpoint")
    assert_same(namespace, torch.load(folder / "argparse_namespace.pt", weights_only=False))
    assert isinstance(namespace["args"], argparse.Namespace) and namespace["args"].lr == 0.1
    # numpy values become plain Python scalars and tensors (documented).
    scalar = picklejail.load(folder / "numpy_scalar.pt", policy="checkpoint")
    assert type(scalar["best_acc"]) is float and scalar["best_acc"] == pytest.approx(0.9)
    array = picklejail.load(folder / "numpy_array.pt", policy="checkpoint")
    assert torch.equal(array["arr"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


# ---------------------------------------------------------------- generated checkpoints

def rich_object():
    """Everything the description can carry, with shared and tied tensors."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    shared = torch.arange(6.0).reshape(2, 3)
    return {
        "model": lin.state_dict(),             # OrderedDict with _metadata; views of the Parameters
        "params": [lin.weight, lin.bias],      # Parameters (requires_grad), same bytes as model.*
        "tied": shared, "tied_again": shared,  # one tensor object under two names
        "same_bytes": shared.view(2, 3),       # a second object, identical view
        "row": shared[1],
        "tuple": (1, 2.5, "x", None, True),
        "nested": {"a": [1, {"b": (torch.ones(2),)}]},
        "big": 2 ** 100, "negative_big": -2 ** 70, "i64_min": -2 ** 63,
        "nan": float("nan"), "minus_inf": float("-inf"), "minus_zero": -0.0, "tiny": 5e-324,
        "complex": 1 + 2j, "bytes": b"\x00\xff", "bytearray": bytearray(b"ab"),
        "set": {1, 2}, "frozenset": frozenset({"a"}),
        "dtype": torch.float16, "device": torch.device("cuda", 1),
        "keys": {1: "int", None: "none", False: "bool", 2.5: "float", (1, 2): "tuple"},
        "unicode": "h\u00e9llo \u2603",
        "requires_grad": torch.zeros(2, requires_grad=True),
        "complex128": torch.complex(torch.arange(3.0).double(), torch.ones(3).double()),
        "complex64": torch.complex(torch.ones(2), torch.zeros(2)),
        "bfloat16": torch.arange(4.0).to(torch.bfloat16),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(3),
        "counter": collections.Counter("abca"),
        "odict": collections.OrderedDict(b=1, a=2),
    }


def save(obj, path, **kwargs):
    torch.save(obj, path, **kwargs)
    return path


SAVE_VARIANTS = {
    "zip": {},
    "protocol4": {"pickle_protocol": 4},
    "protocol5": {"pickle_protocol": 5},
    "legacy": {"_use_new_zipfile_serialization": False},
}


@needs_torch
@pytest.mark.parametrize("variant", SAVE_VARIANTS)
def test_rich_object_matches_torch_load(variant, tmp_path):
    path = save(rich_object(), tmp_path / "rich.pt", **SAVE_VARIANTS[variant])
    got, want = picklejail.load(path), torch.load(path, weights_only=False)
    assert_same(got, want)
    assert got["tied"] is got["tied_again"]
    assert got["same_bytes"] is not got["tied"]
    assert isinstance(got["params"][0], torch.nn.Parameter) and got["params"][0].requires_grad
    assert got["model"]._metadata == want["model"]._metadata


@needs_torch
def test_tensor_at_top_level_and_deep_nesting(tmp_path):
    assert_same(picklejail.load(save(torch.arange(5), tmp_path / "t.pt")), torch.arange(5))
    deep = torch.ones(1)
    for i in range(300):
        deep = [deep] if i % 2 else {"k": deep}
    path = save(deep, tmp_path / "deep.pt")
    assert_same(picklejail.load(path), torch.load(path, weights_only=False))


@needs_torch
def test_torch_size_comes_back_as_torch_size(tmp_path):
    path = save({"shape": torch.Size([2, 3])}, tmp_path / "size.pt")
    assert type(picklejail.load(path)["shape"]) is torch.Size


@needs_torch
def test_module_load_state_dict_flow(tmp_path):
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    path = save(model.state_dict(), tmp_path / "sd.pt")
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    fresh.load_state_dict(picklejail.load(path))
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- zero copy and writability

@needs_torch
def test_tensors_are_views_of_one_mapping():
    state = picklejail.load(FIXTURES / "torch-1.13" / "cnn_state_dict.pt")
    assert len({t.storage().data_ptr() for t in state.values()}) == 1


@needs_torch
def test_tensors_are_writable_and_private(tmp_path):
    path = save({"w": torch.ones(4), "v": torch.arange(3)}, tmp_path / "w.pt")
    first = picklejail.load(path)
    first["w"].add_(1)
    first["v"][0] = 42
    assert torch.equal(first["w"], torch.full((4,), 2.0))
    second = picklejail.load(path)
    assert torch.equal(second["w"], torch.ones(4)) and second["v"][0] == 0


@needs_numpy
def test_numpy_arrays_are_writable(tmp_path):
    array = picklejail.load(FIXTURES / "torch-1.13" / "list_top.pt", backend="numpy")[0]
    array += 1
    assert picklejail.load(FIXTURES / "torch-1.13" / "list_top.pt", backend="numpy")[0][0] == 1


@needs_numpy
def test_numpy_backend_containers_and_identity():
    got = picklejail.load(FIXTURES / "torch-1.13" / "views.pt", backend="numpy")
    assert type(got) is dict and got["full"] is got["tied_a"]
    state = picklejail.load(FIXTURES / "torch-1.13" / "cnn_state_dict.pt", backend="numpy")
    assert type(state) is collections.OrderedDict and "0" in state._metadata
    top = picklejail.load(FIXTURES / "torch-1.13" / "list_top.pt", backend="numpy")
    assert type(top) is list and type(top[1]) is tuple


@needs_numpy
def test_numpy_backend_raw_dtypes():
    got = picklejail.load(FIXTURES / "torch-1.13" / "dtypes.pt", backend="numpy")
    assert got["bfloat16"].dtype == np.uint16
    assert got["complex128"].dtype == np.complex128 and got["complex128"].shape == (3, 5)
    if torch is not None:
        want = torch.load(FIXTURES / "torch-1.13" / "dtypes.pt", weights_only=False)
        assert (got["bfloat16"] == want["bfloat16"].view(torch.int16).numpy().view(np.uint16)).all()
        assert (got["complex128"] == want["complex128"].numpy()).all()


# ---------------------------------------------------------------- map_location

MAP_LOCATIONS_TO_CPU = {
    "str": lambda: "cpu",
    "device": lambda: torch.device("cpu"),
    "dict_other_device": lambda: {"cuda:0": "cpu"},
    "dict_cpu": lambda: {"cpu": "cpu"},
    "callable_identity": lambda: (lambda storage, location: storage),
    "callable_none": lambda: (lambda storage, location: None),
}


@needs_torch
@pytest.mark.parametrize("form", MAP_LOCATIONS_TO_CPU)
def test_map_location_to_cpu(form, tmp_path):
    location = MAP_LOCATIONS_TO_CPU[form]()
    path = save({"w": torch.ones(2)}, tmp_path / "w.pt")
    got = picklejail.load(path, map_location=location)
    assert got["w"].device == torch.device("cpu")
    assert_same(got, torch.load(path, map_location=location, weights_only=False))


@needs_torch
@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="no CUDA device")
def test_map_location_to_cuda(tmp_path):
    path = save({"w": torch.ones(2), "t": torch.zeros(1)}, tmp_path / "w.pt")
    path_t = save({"w": torch.ones(2)}, tmp_path / "w2.pt")
    assert picklejail.load(path, map_location="cuda")["w"].is_cuda
    assert picklejail.load(path_t, map_location={"cpu": "cuda:0"})["w"].device == torch.device("cuda:0")


@needs_torch
def test_map_location_refuses_nonsense(tmp_path):
    path = save({"w": torch.ones(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError):
        picklejail.load(path, map_location="not-a-device")
    with pytest.raises(TypeError):
        picklejail.load(path, map_location=3)


@needs_numpy
def test_numpy_backend_refuses_devices():
    with pytest.raises(ValueError, match="numpy"):
        picklejail.load(FIXTURES / "torch-1.13" / "views.pt", backend="numpy", map_location="cuda")
    assert picklejail.load(FIXTURES / "torch-1.13" / "views.pt", backend="numpy", map_location="cpu")


# ---------------------------------------------------------------- inputs and select

@needs_torch
@pytest.mark.parametrize("form", ["str", "pathlib", "open_file", "bytesio", "offset_file"])
def test_input_forms(form, tmp_path):
    path = FIXTURES / "torch-1.13" / "params.pt"
    want = torch.load(path, weights_only=False)
    if form in ("str", "pathlib"):
        assert_same(picklejail.load(str(path) if form == "str" else path), want)
    elif form == "open_file":
        with open(path, "rb") as f:
            assert_same(picklejail.load(f), want)
    elif form == "bytesio":
        assert_same(picklejail.load(io.BytesIO(path.read_bytes())), want)
    else:  # a checkpoint embedded after other bytes: read from the current position
        blob = tmp_path / "blob"
        blob.write_bytes(b"prefix" + path.read_bytes())
        with open(blob, "rb") as f:
            f.read(6)
            assert_same(picklejail.load(f), want)


def test_text_file_and_bad_arguments(tmp_path):
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as f, pytest.raises(TypeError, match="binary"):
        picklejail.load(f, backend="numpy")
    with pytest.raises(TypeError):
        picklejail.load(12345, backend="numpy")
    with pytest.raises(ValueError, match="backend"):
        picklejail.load(tmp_path / "t.txt", backend="jax")


def test_missing_file_is_io_error(tmp_path):
    with pytest.raises(picklejail.IoError):
        picklejail.load(tmp_path / "missing.pt", backend=BACKEND)


@needs_torch
def test_select(tmp_path):
    path = save(rich_object(), tmp_path / "rich.pt")
    got = picklejail.load(path, select=["model.", "tied"])
    want = torch.load(path, weights_only=False)
    assert list(got["model"]) == list(want["model"])
    assert got["tied"] is got["tied_again"]         # same object, reached through its id
    assert "row" not in got and "scalar" not in got  # unselected tensors leave mappings
    assert got["params"] == [None, None]             # and are None in sequences
    assert got["big"] == 2 ** 100                    # everything else is still there
    only = picklejail.load(path, select="scalar")
    assert set(k for k, v in only.items() if isinstance(v, torch.Tensor)) == {"scalar"}


# ---------------------------------------------------------------- errors

def reduce_os_system(command):
    """Protocol-2 pickle bytes for os.system(command), assembled by hand (never unpickled)."""
    cmd = command.encode()
    return (b"\x80\x02cos\nsystem\nq\x00" + b"X" + struct.pack("<I", len(cmd)) + cmd
            + b"q\x01\x85q\x02Rq\x03.")


def write_evil(path, container, canary):
    pkl = reduce_os_system(f"touch {canary}")
    if container == "raw_pickle":
        path.write_bytes(pkl)
    elif container == "torch_zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/version", "3\n")
    else:  # legacy: magic, protocol, sys_info (harmless plain values), then the payload
        head = b"".join(pickle.dumps(x, protocol=2) for x in (
            0x1950A86A20F9469CFC6C, 1001,
            {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}))
        path.write_bytes(head + pkl)
    return path


@pytest.mark.parametrize("container", ["raw_pickle", "torch_zip", "legacy"])
def test_os_system_is_forbidden_global(container, tmp_path):
    canary = tmp_path / "PWNED"
    evil = write_evil(tmp_path / "evil.pt", container, canary)
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(evil, backend=BACKEND)
    error = caught.value
    assert error.global_name in ("os.system", "posix.system")
    assert error.global_name in str(error) and error.code == "forbidden_global"
    assert isinstance(error, picklejail.PicklejailError)
    assert not canary.exists()


def test_error_classes():
    codes = {"forbidden_global": "ForbiddenGlobal", "malformed": "Malformed",
             "unsupported": "Unsupported", "too_large": "TooLarge", "timeout": "Timeout",
             "sandbox_violation": "SandboxViolation", "worker_crashed": "WorkerCrashed",
             "resource_exceeded": "ResourceExceeded", "busy": "Busy", "denied": "Denied",
             "io_error": "IoError", "invalid_request": "InvalidRequest", "internal": "Internal"}
    for code, name in codes.items():
        cls = getattr(picklejail, name)
        error = picklejail.errors.error_for(code, "m", mode="daemon /x")
        assert type(error) is cls and cls.code == code and str(error) == f"daemon /x: {code}: m"
    error = picklejail.errors.error_for("forbidden_global",
                                        "at byte 41: global os.system is not allowed")
    assert error.global_name == "os.system"
    assert pickle.loads(pickle.dumps(error)).global_name == "os.system"  # our own exception object
    assert type(picklejail.errors.error_for("new_code", "m")) is picklejail.PicklejailError
    named = picklejail.ForbiddenGlobal("forbidden_global", "refused", global_name="os.system")
    assert "os.system" in str(named)


def test_unknown_policy_is_invalid_request():
    with pytest.raises(picklejail.InvalidRequest, match="no-such-policy"):
        picklejail.load(FIXTURES / "torch-1.13" / "views.pt", policy="no-such-policy",
                        backend=BACKEND)


def test_no_daemon_and_no_executable(monkeypatch, tmp_path):
    monkeypatch.delenv("PICKLEJAIL_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(picklejail.Unavailable) as caught:
        picklejail.load(FIXTURES / "torch-1.13" / "views.pt", backend="numpy")
    assert "nobody-listens.sock" in str(caught.value) and "PICKLEJAIL_BIN" in str(caught.value)
    monkeypatch.setenv("PICKLEJAIL_BIN", str(tmp_path / "nope"))
    with pytest.raises(picklejail.Unavailable, match="nope"):
        picklejail.load(FIXTURES / "torch-1.13" / "views.pt", backend="numpy")


def test_executable_found_on_path(monkeypatch, picklejail_bin):
    monkeypatch.delenv("PICKLEJAIL_BIN")
    monkeypatch.setenv("PATH", str(Path(picklejail_bin).parent))
    assert picklejail.inspect(FIXTURES / "torch-1.13" / "views.pt", socket=False)["tensors"]


# ---------------------------------------------------------------- image checks

def make_image(tensors, metadata=None, description=None, data=None):
    """safetensors bytes from {name: (dtype, shape, begin, end)}; picklejail metadata added."""
    header = {}
    if description is not None:
        metadata = dict(metadata or {}, **{"picklejail.object": json.dumps(description)})
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, begin, end) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 64)
    if data is None:
        data = bytes(max([end for *_, end in tensors.values()], default=0))
    return struct.pack("<Q", len(text)) + text + data


def parse(blob, select=None):
    blob = bytearray(blob)  # writable, like the private mappings the client really uses
    return image_mod.parse_image(blob, len(blob), select=select)


def node(name, ident=0, dtype="float32", **extra):
    return {"tensor": name, "id": ident, "dtype": dtype, **extra}


GOOD = {"a": ("F32", [2], 0, 8), "b": ("I64", [1], 8, 16)}
GOOD_DESCRIPTION = {"dict": [["a", node("a")], ["b", node("b", 1, "int64")]]}

BAD_IMAGES = {
    "short": b"\x01\x00",
    "length_past_end": struct.pack("<Q", 1000) + b"{}",
    "length_huge": struct.pack("<Q", 2 ** 63) + b"{}",
    "not_utf8": struct.pack("<Q", 2) + b"\xff\xfe",
    "not_object": struct.pack("<Q", 2) + b"[]",
    "unknown_dtype": make_image({"a": ("F128", [1], 0, 16)}, description={"dict": []}),
    "negative_shape": make_image({"a": ("F32", [-1], 0, 0)}, description={"dict": []}),
    "bool_shape": make_image({"a": ("F32", [True], 0, 4)}, description={"dict": []}),
    "offsets_out_of_bounds": make_image({"a": ("F32", [4], 0, 16)}, description={"dict": []},
                                        data=bytes(8)),
    "wrong_byte_count": make_image({"a": ("F32", [3], 0, 8)}, description={"dict": []}),
    "overlap": make_image({"a": ("F32", [2], 0, 8), "b": ("F32", [2], 4, 12)},
                          description={"dict": []}, data=bytes(12)),
    "hole": make_image({"a": ("F32", [1], 0, 4), "b": ("F32", [1], 8, 12)},
                       description={"dict": []}),
    "trailing_bytes": make_image({"a": ("F32", [1], 0, 4)}, description={"dict": []}, data=bytes(8)),
    "no_description": make_image(GOOD, metadata={"format": "pt"}),
    "alias_to_nothing": make_image(GOOD, metadata={"c": "zzz"}, description=GOOD_DESCRIPTION),
    "alias_shadows_tensor": make_image(GOOD, metadata={"a": "b"}, description=GOOD_DESCRIPTION),
    "missing_tensor": make_image(GOOD, description={"dict": [["x", node("x")]]}),
    "id_denotes_two": make_image(GOOD, description={"dict": [
        ["a", node("a", 0)], ["b", node("b", 0, "int64")]]}),
    "dtype_mismatch": make_image(GOOD, description={"dict": [["a", node("a", 0, "float64")]]}),
    "bad_id": make_image(GOOD, description={"dict": [["a", node("a", -1)]]}),
    "complex_not_f64": make_image(GOOD, metadata={"picklejail.complex128": '["a"]'},
                                  description=GOOD_DESCRIPTION),
    "description_not_json": make_image(GOOD, metadata={"picklejail.object": "{"}),
}
BAD_IMAGES["nan_literal"] = make_image(GOOD, metadata={"picklejail.object": '{"float": NaN}'})
BAD_IMAGES["duplicate_names"] = (lambda b: b.replace(b'"b"', b'"a"'))(make_image(GOOD, description={}))
BAD_IMAGES["description_bad_node"] = make_image(GOOD, description={"what": 1})
BAD_IMAGES["description_bad_int"] = make_image(GOOD, description={"int": "zz"})
BAD_IMAGES["tensor_dict_keys_not_list"] = make_image(
    GOOD, description={"odict_of_tensors": "ab", "first_id": 0})
BAD_IMAGES["tensor_dict_key_not_str"] = make_image(
    GOOD, description={"odict_of_tensors": ["a", 1], "first_id": 0})
BAD_IMAGES["tensor_dict_no_first_id"] = make_image(GOOD, description={"dict_of_tensors": ["a"]})
BAD_IMAGES["tensor_dict_negative_id"] = make_image(
    GOOD, description={"dict_of_tensors": ["a"], "first_id": -1})
BAD_IMAGES["tensor_dict_prefix_not_str"] = make_image(
    GOOD, description={"dict_of_tensors": ["a"], "first_id": 0, "prefix": 1})
BAD_IMAGES["tensor_dict_missing_tensor"] = make_image(
    GOOD, description={"dict_of_tensors": ["a", "x"], "first_id": 0})
BAD_IMAGES["tensor_dict_id_denotes_two"] = make_image(GOOD, description={"tuple": [
    {"dict_of_tensors": ["a", "b"], "first_id": 0}, node("b", 0, "int64")]})


@needs_numpy
@pytest.mark.parametrize("case", BAD_IMAGES)
def test_image_checks(case):
    with pytest.raises(picklejail.Malformed):
        image = parse(BAD_IMAGES[case])
        rebuild_mod.rebuild(image, backends.NumpyBuilder(None))  # for the description_* cases


@needs_numpy
def test_image_good_and_stand_ins():
    description = {"dict": [
        ["a", node("a")], ["again", node("a")], ["b", node("b", 1, "int64")],
        ["cfg", {"object": "omegaconf.dictconfig.DictConfig", "args": {"tuple": []},
                 "state": {"dict": [["x", 1]]}}],
        ["ns", {"object": "argparse.Namespace", "args": {"tuple": []},
                "state": {"dict": [["lr", 0.5]]}}],
        ["fn", {"global": "builtins.print"}],
        ["dd", {"defaultdict": [["k", [1]]], "factory": "list"}],
        ["size", {"size": [2, 3]}],
        ["future", {"tuple": [], "some_later_field": True}],
    ]}
    got = rebuild_mod.rebuild(parse(make_image(GOOD, description=description)),
                              backends.NumpyBuilder(None))
    assert got["a"] is got["again"] and got["a"].dtype == np.float32
    assert got["cfg"] == picklejail.Record("omegaconf.dictconfig.DictConfig", (), {"x": 1})
    assert got["ns"] == argparse.Namespace(lr=0.5)
    assert got["fn"] == picklejail.GlobalRef("builtins.print")
    assert got["dd"].default_factory is list and got["dd"]["k"] == [1]
    assert got["size"] == (2, 3) and got["future"] == ()


@needs_numpy
def test_tensor_dict_node():
    """The keys-only state dict: names are prefix + key, ids first_id + i (output-format.md)."""
    tensors = {"m.a": ("F32", [2], 0, 8), "m.b": ("I64", [1], 8, 16)}
    plain = {"odict_of_tensors": ["a", "b"], "first_id": 3, "prefix": "m.",
             "attrs": {"dict": [["_metadata", {"dict": []}]]}}
    got = rebuild_mod.rebuild(parse(make_image(tensors, description=plain)),
                              backends.NumpyBuilder(None))
    assert type(got) is collections.OrderedDict and list(got) == ["a", "b"]
    assert got["a"].dtype == np.float32 and got["b"].dtype == np.int64
    assert got._metadata == {}
    # Another node with one of its ids is the same object; an alias gets its own.
    shared = {"tuple": [{"dict_of_tensors": ["a", "b", "c"], "first_id": 0, "prefix": "m."},
                        node("m.b", 1, "int64")]}
    blob = make_image(tensors, metadata={"m.c": "m.a"}, description=shared)
    mapping, again = rebuild_mod.rebuild(parse(blob), backends.NumpyBuilder(None))
    assert type(mapping) is dict and again is mapping["b"]
    assert mapping["c"] is not mapping["a"] and np.shares_memory(mapping["c"], mapping["a"])
    # select: entries whose tensors were not written are left out.
    blob = make_image({"m.a": ("F32", [2], 0, 8)}, description=plain)
    assert list(rebuild_mod.rebuild(parse(blob, select=["m.a"]),
                                    backends.NumpyBuilder(None))) == ["a"]
    with pytest.raises(picklejail.Malformed, match="m.b"):
        parse(blob)


@needs_torch
def test_image_size_node_with_torch():
    description = {"dict": [["a", node("a")], ["s", {"size": [2, 3]}]]}
    got = rebuild_mod.rebuild(parse(make_image(GOOD, description=description)),
                              backends.TorchBuilder(None))
    assert type(got["s"]) is torch.Size and got["s"] == torch.Size([2, 3])


@needs_numpy
def test_select_allows_unwritten_tensors_only_if_unselected():
    description = {"dict": [["a", node("a")], ["gone", node("gone", 5)]]}
    blob = make_image({"a": ("F32", [2], 0, 8)}, description=description)
    got = rebuild_mod.rebuild(parse(blob, select=["a"]), backends.NumpyBuilder(None))
    assert list(got) == ["a"]
    with pytest.raises(picklejail.Malformed):
        parse(blob, select=["gone"])
    with pytest.raises(picklejail.Malformed):
        parse(blob)


def sealed_memfd(data, seals=memory.REQUIRED_SEALS):
    import fcntl
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_memfd_checks(tmp_path):
    import fcntl
    blob = make_image(GOOD, description=GOOD_DESCRIPTION)
    fd = sealed_memfd(blob)
    try:
        mapping = memory.map_sealed_memfd(fd, len(blob))
        assert mapping[:len(blob)] == blob
        with pytest.raises(picklejail.Malformed, match="holds"):
            memory.map_sealed_memfd(fd, len(blob) - 1)
    finally:
        os.close(fd)
    for seals in (0, memory.REQUIRED_SEALS & ~fcntl.F_SEAL_WRITE,
                  memory.REQUIRED_SEALS & ~fcntl.F_SEAL_SHRINK):
        fd = sealed_memfd(blob, seals)
        try:
            with pytest.raises(picklejail.Malformed, match="seals"):
                memory.map_sealed_memfd(fd, len(blob))
        finally:
            os.close(fd)
    (tmp_path / "plain").write_bytes(blob)
    with open(tmp_path / "plain", "rb") as f, pytest.raises(picklejail.Malformed, match="memfd"):
        memory.map_sealed_memfd(f.fileno(), len(blob))


# ---------------------------------------------------------------- patch_torch_load

def third_party_loader(path):
    """Stands in for library code that calls torch.load itself."""
    return torch.load(path, map_location="cpu", weights_only=False)


@needs_torch
def test_patch_torch_load_as_context_manager(tmp_path):
    original = torch.load
    canary = tmp_path / "PWNED"
    evil = write_evil(tmp_path / "evil.pt", "torch_zip", canary)
    with picklejail.patch_torch_load() as patch:
        assert patch.active and torch.load is not original
        got = third_party_loader(FIXTURES / "torch-1.13" / "params.pt")
        assert isinstance(got["weight"], torch.nn.Parameter)
        with pytest.raises(picklejail.ForbiddenGlobal, match="system"):
            third_party_loader(evil)
        # torch.load's whole signature is accepted.
        torch.serialization.load(FIXTURES / "torch-1.13" / "views.pt", None, pickle,
                                 weights_only=True, mmap=None, encoding="latin1")
    assert torch.load is original and torch.serialization.load is original
    assert not canary.exists()


@needs_torch
def test_patch_torch_load_as_plain_call_and_nesting(tmp_path):
    original = torch.load
    path = save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    undo = picklejail.patch_torch_load(policy="weights")
    try:
        module = torch.nn.Linear(2, 2)
        module.load_state_dict(torch.load(path))
        inner = picklejail.patch_torch_load(policy="checkpoint")
        assert torch.load(FIXTURES / "torch-1.13" / "argparse_namespace.pt")["args"].lr == 0.1
        undo()  # out of order: the inner patch stays in force
        assert torch.load is not original
        assert torch.load(FIXTURES / "torch-1.13" / "argparse_namespace.pt")["args"].lr == 0.1
        inner.undo()
        assert torch.load is original
        undo()  # idempotent
        assert torch.load is original
    finally:
        undo()
        torch.load = torch.serialization.load = original


@needs_torch
def test_patch_warns_about_custom_pickle_module():
    class Custom:
        pass
    with picklejail.patch_torch_load(), pytest.warns(RuntimeWarning, match="pickle_module"):
        torch.load(FIXTURES / "torch-1.13" / "views.pt", pickle_module=Custom)


# ---------------------------------------------------------------- convert, inspect, python -m

def test_convert_and_inspect_locally(tmp_path):
    out = tmp_path / "out.safetensors"
    summary = picklejail.convert(FIXTURES / "torch-1.13" / "views.pt", out)
    assert summary["size"] == out.stat().st_size and summary["tensors"] == 9
    entries, metadata = safetensors_read.read_raw(out)
    assert metadata["tied_a"] == "full" and "picklejail.object" in metadata
    report = picklejail.inspect(FIXTURES / "torch-1.13" / "views.pt")
    assert report["format"] == "zip" and report["aliases"] == {"tied_a": "full"}
    assert {t["name"] for t in report["tensors"]} == set(entries)
    with open(FIXTURES / "torch-1.13" / "views.pt", "rb") as f:
        assert picklejail.inspect(f)["tensors"] == report["tensors"]


def test_convert_failure_leaves_no_file(tmp_path):
    out = tmp_path / "out.safetensors"
    with pytest.raises(picklejail.ForbiddenGlobal):
        picklejail.convert(write_evil(tmp_path / "e.pt", "raw_pickle", tmp_path / "c"), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "e.pt"]


def run_module(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "client" / "python"))
    return subprocess.run([sys.executable, "-m", "picklejail", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_python_m_picklejail(tmp_path):
    src = tmp_path / "params.pt"
    shutil.copy(FIXTURES / "torch-1.13" / "params.pt", src)
    done = run_module("convert", src)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors"] == 3 and (tmp_path / "params.safetensors").is_file()
    done = run_module("inspect", src, "--local")
    assert done.returncode == 0 and json.loads(done.stdout)["format"] == "zip"
    done = run_module("load", src, "--backend", "numpy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split("\t") == ["weight", "float32", "[3, 4]"]
    done = run_module("load", FIXTURES / "torch-1.13" / "whole_module.pt")
    assert done.returncode == 1 and "forbidden_global" in done.stderr


def test_pip_install_into_venv(tmp_path):
    """The package installs offline with Debian's setuptools: venv --system-site-packages."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "client" / "python", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    missing = [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs Debian's python3-{', python3-'.join(missing)}")
    if sys.prefix != sys.base_prefix:
        # A venv made from inside a venv sees the base interpreter's site
        # packages, not this one's (numpy, for the load below).
        pytest.skip("runs inside a virtual environment; needs the system interpreter")
    venv = tmp_path / "venv"
    done = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "ensurepip is not available" in done.stdout + done.stderr:
        pytest.skip("needs Debian's python3-venv")
    assert done.returncode == 0, done.stdout + done.stderr
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-index",
                           "--quiet", str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([str(python), "-c", "import picklejail; print(picklejail.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith(str(venv)), done.stdout + done.stderr
    done = subprocess.run([str(python), "-m", "picklejail", "load", "--backend", "numpy",
                           str(FIXTURES / "torch-1.13" / "params.pt")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "weight" in done.stdout, done.stderr


# ---------------------------------------------------------------- daemon mode

def wait_for_socket(path, process=None, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"picklejaild exited with {process.returncode}: "
                               f"{process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with DaemonConnection(path) as connection:
                connection.ping()
                return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on {path} within {timeout} s")


@pytest.fixture(params=["fake", "picklejaild"])
def daemon(request, tmp_path, picklejail_bin):
    """A socket path where a daemon answers: the in-process fake, or the real picklejaild."""
    path = tmp_path / "d.sock"
    if request.param == "fake":
        fake = FakeDaemon(path, picklejail_bin)
        wait_for_socket(path)
        yield str(path)
        fake.close()
        return
    if not (DAEMON_BIN.is_file() and os.access(DAEMON_BIN, os.X_OK)):
        pytest.skip(f"{DAEMON_BIN} is not built yet")
    process = subprocess.Popen([str(DAEMON_BIN), "--socket", str(path), "--policy-dir", str(POLICY_DIR)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(path, process)
        yield str(path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def fake_daemon(tmp_path, picklejail_bin):
    path = tmp_path / "fake.sock"
    fake = FakeDaemon(path, picklejail_bin)
    wait_for_socket(path)
    yield fake
    fake.close()


DAEMON_FIXTURES = ["torch-1.13/dtypes.pt", "torch-1.13/views.pt", "torch-1.13/params.pt",
                   "torch-1.13/train_checkpoint.pt", "torch-2.11/cnn_state_dict.pt"]


@needs_torch
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fixture", DAEMON_FIXTURES)
def test_daemon_load_matches_torch(daemon, transport, fixture, monkeypatch):
    monkeypatch.delenv("PICKLEJAIL_BIN")  # a fallback would hide a daemon failure
    monkeypatch.setenv("PATH", "/nonexistent")
    path = FIXTURES / fixture
    assert_same(picklejail.load(path, socket=daemon, transport=transport),
                torch.load(path, weights_only=False))


@needs_numpy
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_daemon_fd_input_and_env_socket(daemon, transport, monkeypatch):
    monkeypatch.setenv("PICKLEJAIL_SOCKET", daemon)
    monkeypatch.delenv("PICKLEJAIL_BIN")
    with open(FIXTURES / "torch-1.13" / "views.pt", "rb") as f:
        got = picklejail.load(f, backend="numpy", transport=transport)
    assert got["full"] is got["tied_a"] and got["full"].shape == (8, 8)
    got = picklejail.load(io.BytesIO((FIXTURES / "torch-1.13" / "params.pt").read_bytes()),
                          backend="numpy", transport=transport, select=["bias"])
    assert list(got) == ["bias"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_daemon_errors(daemon, transport, tmp_path):
    canary = tmp_path / "PWNED"
    evil = write_evil(tmp_path / "evil.pt", "torch_zip", canary)
    backend = BACKEND
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(evil, socket=daemon, transport=transport, backend=backend)
    assert caught.value.global_name in ("os.system", "posix.system")
    assert str(caught.value).startswith(f"daemon {daemon}: forbidden_global: ")
    with pytest.raises(picklejail.Unsupported):
        picklejail.load(FIXTURES / "torch-1.13" / "torchscript.pt", socket=daemon, backend=backend)
    with pytest.raises(picklejail.IoError):
        picklejail.load(tmp_path / "missing.pt", socket=daemon, backend=backend)
    with pytest.raises(picklejail.InvalidRequest):
        picklejail.load(FIXTURES / "torch-1.13" / "views.pt", socket=daemon, policy="../etc",
                        backend=backend)
    assert not canary.exists()


def test_daemon_convert_inspect_and_stats(daemon, tmp_path):
    out = tmp_path / "views.safetensors"
    summary = picklejail.convert(FIXTURES / "torch-1.13" / "views.pt", out, socket=daemon)
    assert summary["size"] == out.stat().st_size and summary["tensors"] == 9
    local = tmp_path / "local.safetensors"
    picklejail.convert(FIXTURES / "torch-1.13" / "views.pt", local, socket=False)
    assert out.read_bytes() == local.read_bytes()  # deterministic output, either path
    report = picklejail.inspect(FIXTURES / "torch-1.13" / "views.pt", socket=daemon)
    assert report["aliases"] == {"tied_a": "full"} and "ok" not in report
    with DaemonConnection(daemon) as connection:
        assert connection.ping()["protocol"] == 1
        assert "stats" in connection.stats()


@needs_numpy
def test_shm_objects_are_released(fake_daemon):
    got = picklejail.load(FIXTURES / "torch-1.13" / "views.pt", socket=fake_daemon.path,
                          transport="shm", backend="numpy")
    assert got["full"].shape == (8, 8)
    assert fake_daemon.shm_names == set()
    assert [r["op"] for r in fake_daemon.requests] == ["ping", "load", "release"]


@needs_numpy
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_stream_buffering(fake_daemon, transport, chunk):
    """Replies split anywhere, or a reply and its inline bytes in one read, parse the same."""
    fake_daemon.chunk = chunk
    got = picklejail.load(FIXTURES / "torch-1.13" / "params.pt", socket=fake_daemon.path,
                          transport=transport, backend="numpy")
    assert list(got) == ["weight", "bias", "buf"]


@needs_numpy
def test_several_requests_on_one_connection(fake_daemon):
    fake_daemon.chunk = 3
    with DaemonConnection(fake_daemon.path) as connection:
        for _ in range(3):
            assert connection.ping()["ok"] is True
        with pytest.raises(picklejail.InvalidRequest):
            connection.release("picklejail-unknown")
        assert connection.ping()["protocol"] == 1


@pytest.mark.parametrize("tamper,transport,error", [
    ("unsealed", "memfd", picklejail.Malformed),
    ("size", "memfd", picklejail.Malformed),
    ("size", "shm", picklejail.ProtocolError),
    ("header", "memfd", picklejail.Malformed),
    ("header", "inline", picklejail.Malformed),
    ("header", "shm", picklejail.Malformed),
    ("no_fd", "memfd", picklejail.ProtocolError),
    ("extra_fd", "memfd", picklejail.ProtocolError),
    ("bad_json", "memfd", picklejail.ProtocolError),
])
def test_misbehaving_daemon_is_not_trusted(fake_daemon, tamper, transport, error):
    fake_daemon.tamper = tamper
    with pytest.raises(error) as caught:
        picklejail.load(FIXTURES / "torch-1.13" / "params.pt", socket=fake_daemon.path,
                        transport=transport, backend=BACKEND)
    assert fake_daemon.path in str(caught.value)


def test_error_reply_without_global_field(fake_daemon, tmp_path):
    fake_daemon.tamper = "no_global"
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(write_evil(tmp_path / "e.pt", "raw_pickle", tmp_path / "c"),
                        socket=fake_daemon.path, backend=BACKEND)
    assert caught.value.global_name in ("os.system", "posix.system")


def test_too_long_request_is_refused_before_sending(fake_daemon):
    with pytest.raises(picklejail.InvalidRequest, match="line limit"):
        picklejail.load(FIXTURES / "torch-1.13" / "params.pt", socket=fake_daemon.path,
                        select=["x" * 70000], backend=BACKEND)
    assert [r["op"] for r in fake_daemon.requests] == ["ping"]


def test_refused_connection_falls_back_to_local(tmp_path):
    stale = tmp_path / "stale.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the socket file stays, nothing listens: ECONNREFUSED
    got = picklejail.load(FIXTURES / "torch-1.13" / "params.pt", socket=stale,
                          backend=BACKEND)
    assert list(got) == ["weight", "bias", "buf"]


def test_timeout_when_the_daemon_never_answers(tmp_path):
    """A daemon that accepts and then says nothing: Timeout after `timeout`, not a hang."""
    path = tmp_path / "silent.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)  # the kernel accepts the connection; nobody ever reads or writes
    try:
        start = time.monotonic()
        with pytest.raises(picklejail.Timeout, match="timeout of 0.3 s") as caught:
            picklejail.load(FIXTURES / "torch-1.13" / "params.pt", socket=path, timeout=0.3,
                            backend=BACKEND)
        assert 0.3 <= time.monotonic() - start < 5
        assert caught.value.mode == f"daemon {path}"
        with pytest.raises(picklejail.Timeout):
            picklejail.inspect(FIXTURES / "torch-1.13" / "params.pt", socket=path, timeout=0.2)
    finally:
        listener.close()
