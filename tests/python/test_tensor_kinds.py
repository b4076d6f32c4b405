"""Sparse, quantized and meta tensors and Parameters: picklejail.load against torch.load.

The fixtures in tests/fixtures/tensor-kinds were written by torch 1.13's
torch.save (tests/fixtures/generate_tensor_kinds.py); they are ours, so
torch.load(weights_only=False) may read them. The hostile variants of each kind
are Catch2 tests (tests/unit/test_tensor_kinds.cpp), which check the exact
error codes.

    PICKLEJAIL_BIN=build/bin/picklejail /usr/bin/python3 -m pytest tests/python/test_tensor_kinds.py
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import picklejail  # noqa: E402
from picklejail import tensor_kinds  # noqa: E402

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

KINDS = REPO / "tests" / "fixtures" / "tensor-kinds"
FILES = ("sparse.pt", "quantized.pt", "meta.pt", "parameters.pt")


@pytest.fixture(autouse=True)
def local_sandbox(monkeypatch, tmp_path, picklejail_bin):
    monkeypatch.setenv("PICKLEJAIL_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))


def _plain_same(got, want, key):
    assert type(got) is type(want), key
    assert got.dtype == want.dtype and got.shape == want.shape, key
    assert got.requires_grad == want.requires_grad, key
    assert torch.equal(got.detach(), want.detach()), key


@needs_torch
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("policy", ["weights", "checkpoint"])
def test_same_as_torch_load(name, policy):
    got = picklejail.load(KINDS / name, policy=policy)
    want = torch.load(KINDS / name, weights_only=False)
    assert list(got) == list(want)
    for key, value in want.items():
        if is_other_kind(value):
            assert_same_kind(got[key], value, key)
        else:
            _plain_same(got[key], value, key)


@needs_torch
def test_what_the_kinds_look_like():
    sparse = picklejail.load(KINDS / "sparse.pt")
    assert not sparse["coo"].is_coalesced() and sparse["coalesced"].is_coalesced() is False
    assert sparse["csr"].layout == torch.sparse_csr
    assert sparse["csr_int32"].crow_indices().dtype == torch.int32
    assert isinstance(sparse["param"], torch.nn.Parameter) and sparse["param"].is_sparse
    assert torch.equal(sparse["coo"].to_dense(), torch.load(KINDS / "sparse.pt")["coo"].to_dense())
    quantized = picklejail.load(KINDS / "quantized.pt")
    assert quantized["per_channel"].qscheme() == torch.per_channel_affine
    assert quantized["quint8"].dtype == torch.quint8 and quantized["qint32"].dtype == torch.qint32
    meta = picklejail.load(KINDS / "meta.pt")
    assert meta["strided"].is_meta and meta["strided"].stride() == (1, 4)
    assert isinstance(meta["param"], torch.nn.Parameter) and meta["param"].requires_grad


@needs_numpy
def test_numpy_backend_gives_named_tuples():
    sparse = picklejail.load(KINDS / "sparse.pt", backend="numpy")
    coo = sparse["coo"]
    assert isinstance(coo, tensor_kinds.SparseTensor) and coo.layout == "sparse_coo"
    assert coo.size == (3, 3) and coo.indices.dtype == np.int64 and coo.indices.shape == (2, 4)
    assert coo.coalesced is None  # torch 1.13 does not say
    csr = sparse["csr"]
    assert csr.layout == "sparse_csr" and list(csr.compressed_indices) == [0, 1, 3, 3, 4]
    quantized = picklejail.load(KINDS / "quantized.pt", backend="numpy")
    q = quantized["qint8"]
    assert isinstance(q, tensor_kinds.QuantizedTensor) and q.qtype == "qint8"
    assert q.int_repr.dtype == np.int8 and q.scale == 0.05 and q.zero_point == 3
    pc = quantized["per_channel"]
    assert pc.axis == 1 and pc.scales.dtype == np.float64 and pc.zero_points.tolist() == [0, 1, -1, 2]
    meta = picklejail.load(KINDS / "meta.pt", backend="numpy")
    assert meta["meta"] == tensor_kinds.MetaTensor("float32", (3, 4), (4, 1))


def test_convert_names_the_data_tensors(picklejail_bin, tmp_path):
    import subprocess
    import safetensors_read

    out = tmp_path / "sparse.safetensors"
    res = subprocess.run([str(picklejail_bin), "convert", "--local", str(KINDS / "sparse.pt"),
                          str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    entries, metadata = safetensors_read.read_raw(out)
    assert {"coo.indices", "coo.values", "csr.compressed_indices", "csr.plain_indices",
            "csr.values", "empty.indices", "empty.values"} <= set(entries)
    assert entries["coo.indices"][0] == "I64" and list(entries["coo.indices"][1]) == [2, 4]
    assert '"sparse":"sparse_csr"' in metadata["picklejail.object"]
