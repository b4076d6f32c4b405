"""The inert policy on real-world checkpoint shapes (issue 16), against torch.load itself.

tests/fixtures/realworld/ holds files written by torch 1.13 with stand-in classes under
the real module names (generate.py), and hand-assembled code-running files. Here:
- picklejail.load(f, policy="inert") gives what torch.load(weights_only=False) gives,
  compared live (the stand-ins imported from the generator): every tensor, scalar and
  container, each object as a picklejail.Record of its real class (name, args, state), each
  class or function as a picklejail.Global, each bound method as a picklejail.Method, and
  shared objects and cycles shared the same way;
- picklejail.state_dict(record) equals module.state_dict(), keys in order;
- the same checks against manifest.json, which needs neither torch.load nor the stand-ins;
- `convert --policy inert` names a whole model's tensors as state_dict() does under its
  path, and `inspect --policy inert --json` lists the record classes and references;
- every code-running file is refused, naming the global, and the default `weights`
  policy still refuses every one of these files.
The live comparisons unpickle only our own generated files (never the code-running ones).
"""

import argparse
import collections
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONVERT_TIMEOUT_S, REPO
import safetensors_read

sys.path.insert(0, str(REPO / "client" / "python"))
import picklejail  # noqa: E402

try:
    import numpy as np
    import torch
except ImportError:  # the manifest-only checks below still need the client only
    np = torch = None

REALWORLD = REPO / "tests" / "fixtures" / "realworld"
MANIFEST = json.loads((REALWORLD / "manifest.json").read_text())
LOADABLE = [e for e in MANIFEST if e["expect"] == "load"]
CODE_RUNNING = [e for e in MANIFEST if e["expect"] == "refuse"]
WEIGHTS_GLOBALS = set(json.loads((REPO / "policies" / "weights.json").read_text())["globals"])

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable (use /usr/bin/python3)")

# Whole models and plain state dicts: every tensor sits under a nameable key.
CONVERTIBLE = ["yolov5_model.pt", "yolov5_model_legacy.pt", "ultralytics_detect.pt",
               "whole_sequential.pt", "whole_sequential_p4.pt", "whole_sequential_legacy.pt",
               "sd_v1.ckpt", "hydra_config.ckpt"]

SAFETENSORS_DTYPE = {"float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64",
                     "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                     "uint32": "U32", "uint64": "U64", "bfloat16": "BF16"}


@pytest.fixture(autouse=True)
def local_sandbox_env(monkeypatch, tmp_path, picklejail_bin):
    """No stray system daemon; the local fallback uses the binary under test."""
    monkeypatch.setenv("PICKLEJAIL_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))


@pytest.fixture(scope="module")
def generator():
    """The generator module: its stand-in classes and its walk of torch.load's objects."""
    if torch is None:
        pytest.skip("torch is not importable (use /usr/bin/python3)")
    sys.path.insert(0, str(REALWORLD))
    import generate
    return generate


def torch_load(generator, name):
    with generator.standins():
        return torch.load(REALWORLD / name, weights_only=False)


def inert_load(entry):
    return picklejail.load(REALWORLD / entry["file"], policy="inert", backend=entry["backend"])


# ---------------------------------------------------------------- live comparison

def as_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().contiguous().numpy()
    assert isinstance(value, np.ndarray), f"expected an array, got {type(value).__name__}"
    return value


def same_array(want, got, where):
    w, g = as_numpy(want), as_numpy(got)
    assert g.dtype == w.dtype and g.shape == w.shape, f"{where}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
    assert g.tobytes() == w.tobytes(), f"{where}: values differ"


class Compare:
    """Walks torch.load's object and picklejail's side by side."""

    def __init__(self, generator, backend):
        self.gen = generator
        self.backend = backend
        self.seen = {}   # id(torch object) -> the picklejail object it became
        self.keep = []   # reduce results stay alive so their ids are never reused

    def __call__(self, want, got, where="root"):
        if isinstance(want, (torch.Tensor, np.ndarray)):
            if self.backend == "torch" and isinstance(want, torch.Tensor):
                assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__}, not a tensor"
            same_array(want, got, where)
            return
        if isinstance(want, np.generic):
            assert type(got) is type(want.item()) and got == want.item(), f"{where}: {got!r} != {want!r}"
            return
        red = self.gen.reduced(want)
        if red is None:
            self.data(want, got, where)
        elif red[0] == "global":
            assert isinstance(got, picklejail.Global), f"{where}: {got!r} is not Global({red[1]})"
            assert got.name == red[1], f"{where}: Global({got.name}) != {red[1]}"
        elif red[0] == "method":
            assert isinstance(got, picklejail.Method), f"{where}: {got!r} is not a Method"
            assert got.name == red[1], f"{where}: method {got.name} != {red[1]}"
            self(red[2], got.obj, f"{where}.__self__")
        else:
            self.record(want, red, got, where)

    def shared(self, want, got, where):
        """True if `want` was met before: then `got` must be the very object it became."""
        if id(want) in self.seen:
            assert got is self.seen[id(want)], f"{where}: a shared object came back as a copy"
            return True
        self.seen[id(want)] = got
        return False

    def record(self, want, red, got, where):
        self.keep.append(red)
        if red[1] == "argparse.Namespace" and isinstance(got, argparse.Namespace):
            if not self.shared(want, got, where):
                self.data(red[3], vars(got), f"{where}.__dict__")
            return
        assert isinstance(got, picklejail.Record), f"{where}: {got!r} is not Record({red[1]})"
        assert got.name == red[1], f"{where}: Record({got.name}) != {red[1]}"
        if self.shared(want, got, where):
            return
        assert got.kwargs == {}, f"{where}: kwargs {got.kwargs!r}"
        self(red[2], got.args, f"{where}.__args__")
        if red[3] is None:
            assert got.state is None, f"{where}: state {got.state!r} but the object was never BUILT"
        else:
            self(red[3], got.state, f"{where}.__state__")

    def data(self, want, got, where):
        if want is None or isinstance(want, (bool, str, bytes, int, complex)):
            assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"
        elif isinstance(want, float):
            assert type(got) is float, f"{where}: {got!r} is not a float"
            assert got == want or (math.isnan(got) and math.isnan(want)), f"{where}: {got!r} != {want!r}"
        elif isinstance(want, (torch.dtype, torch.device, torch.Size)):
            assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"
        elif isinstance(want, (set, frozenset)):
            assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"
        elif isinstance(want, dict):
            assert isinstance(got, dict), f"{where}: {type(got).__name__}, not a dict"
            if self.shared(want, got, where):
                return
            assert len(got) == len(want), f"{where}: {list(got)} != {list(want)}"
            for (wk, wv), (gk, gv) in zip(want.items(), got.items()):
                self(wk, gk, f"{where}[key {wk!r}]")
                self(wv, gv, f"{where}.{wk}")
        elif isinstance(want, (list, tuple)):
            assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
            if want and self.shared(want, got, where):
                return
            assert len(got) == len(want), f"{where}: {len(got)} items, not {len(want)}"
            for i, (w, g) in enumerate(zip(want, got)):
                self(w, g, f"{where}.{i}")
        else:
            raise AssertionError(f"{where}: the test has no rule for {type(want).__name__}")


def pj_path(obj, path):
    for part in filter(None, path.split(".")):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else obj[part]
    return obj


def pj_names(obj, records, references, seen=None):
    """Record classes and reference names in picklejail's object."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float)):
        return
    seen.add(id(obj))
    children = []
    if isinstance(obj, picklejail.Global):
        references.add(obj.name)
    elif isinstance(obj, picklejail.Method):
        children = [obj.obj]
    elif isinstance(obj, picklejail.Record):
        records.add(obj.name)
        children = [obj.args, obj.kwargs, obj.state]
    elif isinstance(obj, argparse.Namespace):
        records.add("argparse.Namespace")
        children = [vars(obj)]
    elif isinstance(obj, dict):
        children = [x for kv in obj.items() for x in kv]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    for child in children:
        pj_names(child, records, references, seen)


@needs_torch
@pytest.mark.parametrize("entry", LOADABLE, ids=lambda e: e["file"])
def test_inert_load_matches_torch_load(generator, entry):
    want = torch_load(generator, entry["file"])
    got = inert_load(entry)
    Compare(generator, entry["backend"])(want, got)


@needs_torch
@pytest.mark.parametrize("entry", [e for e in LOADABLE if e["state_dicts"]], ids=lambda e: e["file"])
def test_state_dict_matches_module_state_dict(generator, entry):
    want_root = torch_load(generator, entry["file"])
    got_root = inert_load(entry)
    for path in entry["state_dicts"]:
        want = pj_path(want_root, path).state_dict()
        got = picklejail.state_dict(pj_path(got_root, path))
        assert type(got) is collections.OrderedDict
        assert list(got) == list(want), f"{path}: keys differ"
        for key, value in want.items():
            assert type(got[key]) is torch.Tensor, f"{path}.{key}: {type(got[key]).__name__}"
            assert not got[key].requires_grad, f"{path}.{key} requires grad"
            same_array(value, got[key], f"{path}.{key}")


# ---------------------------------------------------------------- against the manifest

def digest(value):
    a = value.detach().contiguous().numpy() if torch is not None and isinstance(value, torch.Tensor) \
        else value
    return [str(a.dtype) if a.dtype != bool else "bool", list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]


@pytest.mark.parametrize("entry", LOADABLE, ids=lambda e: e["file"])
def test_records_references_and_state_dicts_match_manifest(entry):
    backend = entry["backend"] if torch is not None else "numpy"
    got = picklejail.load(REALWORLD / entry["file"], policy="inert", backend=backend)
    records, references = set(), set()
    pj_names(got, records, references)
    assert sorted(records) == entry["records"]
    assert sorted(references) == entry["references"]
    for path, rows in entry["state_dicts"].items():
        sd = picklejail.state_dict(pj_path(got, path))
        assert [[k, *digest(v)] for k, v in sd.items()] == rows, f"state_dict at {path!r}"


@pytest.mark.parametrize("entry", LOADABLE, ids=lambda e: e["file"])
def test_scalars_match_manifest(entry):
    backend = entry["backend"] if torch is not None else "numpy"
    got = picklejail.load(REALWORLD / entry["file"], policy="inert", backend=backend)
    for path, want in entry["scalars"].items():
        node = got
        for part in filter(None, path.split(".")) if path else []:
            if isinstance(node, picklejail.Record):
                node = node.state[part]
            elif isinstance(node, argparse.Namespace):
                node = getattr(node, part)
            elif isinstance(node, list):
                node = node[int(part)]
            else:
                node = node[part]
        assert type(node) is type(want) and node == want, f"{path}: {node!r} != {want!r}"


def test_record_fields_read_as_attributes():
    args = picklejail.load(REALWORLD / "training_args.bin", policy="inert", backend="numpy")
    assert args.name == "transformers.training_args.TrainingArguments"
    assert args.learning_rate == 5e-05 and args.seed == 42 and args.report_to == ["tensorboard"]
    strategy = args.evaluation_strategy
    assert isinstance(strategy, picklejail.Record)
    assert (strategy.name, strategy.args, strategy.state) == (
        "transformers.trainer_utils.IntervalStrategy", ("steps",), None)


def test_enum_by_name_and_class_keys_are_globals():
    ckpt = picklejail.load(REALWORLD / "lightning_hparams.ckpt", policy="inert", backend="numpy")
    stage = ckpt["hyper_parameters"].stage
    assert stage == picklejail.Global("pytorch_lightning.trainer.states.TrainerFn.FITTING")
    assert hash(stage) == hash(picklejail.Global("pytorch_lightning.trainer.states.TrainerFn.FITTING"))
    sd = picklejail.load(REALWORLD / "sd_v1.ckpt", policy="inert", backend="numpy")
    key = picklejail.Global("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    assert list(sd["callbacks"]) == [key]
    assert sd["callbacks"][key]["dirpath"] == "/fsx/stable-diffusion/logs/checkpoints"


def test_omegaconf_parents_are_the_containers_themselves():
    ckpt = picklejail.load(REALWORLD / "hydra_config.ckpt", policy="inert", backend="numpy")
    cfg = ckpt["hyper_parameters"]["cfg"]
    assert cfg.name == "omegaconf.dictconfig.DictConfig" and cfg._parent is None
    model = cfg._content["model"]
    assert model._parent is cfg
    layers = model._content["layers"]
    assert layers.name == "omegaconf.listconfig.ListConfig" and layers._parent is model
    assert [node._val for node in layers._content] == [2, 2, 2, 2]
    assert all(node._parent is layers for node in layers._content)


def test_scheduler_bound_method_is_a_method_record():
    states = picklejail.load(REALWORLD / "lr_schedulers.pt", policy="inert", backend="numpy")
    anneal = states["one_cycle"]["anneal_func"]
    assert isinstance(anneal, picklejail.Method) and anneal.name == "_annealing_cos"
    assert anneal.obj.name == "torch.optim.lr_scheduler.OneCycleLR"
    assert anneal.obj.optimizer.name == "torch.optim.sgd.SGD"
    scale = states["cyclic"]["scale_fn"]
    assert (scale.name, scale.obj.name) == ("_triangular_scale_fn", "torch.optim.lr_scheduler.CyclicLR")
    assert states["swalr"]["anneal_func"] == picklejail.Global("torch.optim.swa_utils.SWALR._cosine_anneal")


# ---------------------------------------------------------------- convert and inspect

@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convert_names_tensors_as_state_dict_does(convert, name, tmp_path):
    entry = next(e for e in LOADABLE if e["file"] == name)
    out = tmp_path / "out.safetensors"
    res = convert(REALWORLD / name, out, "--policy", "inert")
    assert res.returncode == 0, res.stderr
    stored, metadata = safetensors_read.read_raw(out)
    module_names = {(f"{p}.{row[0]}" if p else row[0]) for p, rows in entry["state_dicts"].items()
                    for row in rows}
    assert module_names <= set(entry["tensors"])  # the generator's own invariant
    for tensor_name, info in entry["tensors"].items():
        kept = tensor_name if tensor_name in stored else metadata.get(tensor_name)
        assert kept in stored, f"{tensor_name} is neither stored nor an alias"
        dtype, shape, raw = stored[kept]
        assert (dtype, list(shape)) == (SAFETENSORS_DTYPE[info["dtype"]], info["shape"]), tensor_name
        assert hashlib.sha256(raw).hexdigest() == info["sha256"], f"{tensor_name}: bytes differ"


def test_convert_prefixes_the_model_path(convert, tmp_path):
    out = tmp_path / "out.safetensors"
    assert convert(REALWORLD / "yolov5_model.pt", out, "--policy", "inert").returncode == 0
    stored, _ = safetensors_read.read_raw(out)
    assert "model.model.0.conv.weight" in stored and "model.model.2.anchors" in stored
    assert "model.model.2.grid_cache" not in stored  # a non-persistent buffer


@pytest.mark.parametrize("entry", [e for e in LOADABLE if e["backend"] == "torch"],
                         ids=lambda e: e["file"])
def test_inspect_lists_records_and_references(picklejail_bin, entry):
    res = subprocess.run([str(picklejail_bin), "inspect", str(REALWORLD / entry["file"]),
                          "--policy", "inert", "--json", "--local"],
                         capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    records = sorted(set(entry["records"]) - {"argparse.Namespace"})
    assert sorted(set(report["records"]) - {"argparse.Namespace"}) == records
    assert sorted(report["references"]) == entry["references"]


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("entry", CODE_RUNNING, ids=lambda e: e["file"])
@pytest.mark.parametrize("policy", ["inert", "weights"])
def test_code_running_file_is_refused(entry, policy):
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(REALWORLD / entry["file"], policy=policy, backend="numpy")
    if policy == "inert":
        assert entry["refused_global"] in str(caught.value)
        assert re.search(r"offset \d+", str(caught.value)), str(caught.value)


def test_calling_a_bound_method_names_it():
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(REALWORLD / "reduce_bound_method.pt", policy="inert", backend="numpy")
    assert "clear" in str(caught.value)


@pytest.mark.parametrize("entry", LOADABLE, ids=lambda e: e["file"])
def test_weights_policy_still_refuses_them(entry):
    with pytest.raises(picklejail.ForbiddenGlobal) as caught:
        picklejail.load(REALWORLD / entry["file"], backend="numpy")
    # A renamed global is named as the file spells it, then as Python 3 resolves it.
    named = re.search(r'global (\S+)(?: \((\S+)\))? is not allowed by policy "weights"',
                      str(caught.value))
    assert named, str(caught.value)
    assert (named.group(2) or named.group(1)) not in WEIGHTS_GLOBALS


def test_manifest_covers_every_file():
    on_disk = {p.name for p in REALWORLD.iterdir() if p.suffix in (".pt", ".bin", ".ckpt")}
    assert on_disk == {e["file"] for e in MANIFEST}
    total = sum((REALWORLD / name).stat().st_size for name in on_disk)
    assert total < 300_000, f"the committed fixtures grew to {total} bytes"
