"""`picklejail convert|inspect` through the daemon and locally, and sharded checkpoints."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import safetensors_read
from daemon_support import Daemon, daemon_binary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

try:
    import torch
except ImportError:
    torch = None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    if not daemon_binary().is_file():
        pytest.skip("picklejaild not built")
    d = Daemon(tmp_path_factory.mktemp("cli-daemon"))
    yield d
    d.stop()


def run(bin_, *args, env=None):
    return subprocess.run([str(bin_), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_daemon_and_local_give_identical_bytes(picklejail_bin, daemon, tmp_path):
    src = FIXTURES / "torch-2.11" / "train_checkpoint.pt"
    via_daemon = run(picklejail_bin, "convert", src, tmp_path / "d.st", "--policy", "checkpoint",
                     "--json", "--socket", daemon.socket_path)
    via_env = run(picklejail_bin, "convert", src, tmp_path / "e.st", "--policy", "checkpoint",
                  "--json", env={"PICKLEJAIL_SOCKET": daemon.socket_path})
    local = run(picklejail_bin, "convert", src, tmp_path / "l.st", "--policy", "checkpoint",
                "--json", "--local", env={"PICKLEJAIL_SOCKET": daemon.socket_path})
    for res in (via_daemon, via_env, local):
        assert res.returncode == 0, res.stderr
    assert json.loads(via_daemon.stdout)["mode"] == f"daemon {daemon.socket_path}"
    assert json.loads(via_env.stdout)["mode"] == f"daemon {daemon.socket_path}"
    assert json.loads(local.stdout)["mode"] == "local sandbox"
    assert (tmp_path / "d.st").read_bytes() == (tmp_path / "l.st").read_bytes() == \
        (tmp_path / "e.st").read_bytes()


def test_inspect_through_the_daemon(picklejail_bin, daemon):
    res = run(picklejail_bin, "inspect", FIXTURES / "torch-2.11" / "cnn_state_dict.pt", "--json",
              "--socket", daemon.socket_path)
    assert res.returncode == 0, res.stderr
    listing = json.loads(res.stdout)
    assert listing["format"] == "zip" and len(listing["tensors"]) == 9


def test_errors_say_which_mode_failed(picklejail_bin, daemon, tmp_path):
    src = FIXTURES / "torch-2.11" / "torchscript.pt"
    res = run(picklejail_bin, "convert", src, tmp_path / "q.st", "--socket", daemon.socket_path)
    assert res.returncode == 1 and f"unsupported: daemon {daemon.socket_path}" in res.stderr
    res = run(picklejail_bin, "convert", src, tmp_path / "q.st", "--local")
    assert res.returncode == 1 and "unsupported: local sandbox" in res.stderr
    res = run(picklejail_bin, "convert", src, tmp_path / "q.st", "--socket", tmp_path / "none.sock")
    assert res.returncode == 1 and "io_error: daemon" in res.stderr and "cannot connect" in res.stderr
    assert not (tmp_path / "q.st").exists(), "no partial output on failure"


# ---------------------------------------------------------------- sharded checkpoints

@pytest.fixture
def sharded(tmp_path):
    if torch is None:
        pytest.skip("needs torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    state = model.state_dict()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    src = tmp_path / "hf"
    src.mkdir()
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, src / shard)
        weight_map.update({k: shard for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (src / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return src, state


@pytest.mark.parametrize("mode", ["local", "daemon"])
def test_sharded_checkpoint_converts_like_huggingface(picklejail_bin, daemon, sharded, tmp_path, mode):
    src, state = sharded
    out = tmp_path / "out"
    extra = ["--local"] if mode == "local" else ["--socket", daemon.socket_path]
    res = run(picklejail_bin, "convert", src, out, *extra)
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors",
                                                 "model-00002-of-00002.safetensors"}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for name, want in state.items():
        tensors, _ = safetensors_read.load(out / index["weight_map"][name])
        assert torch.equal(tensors[name], want), name


def test_sharded_index_cannot_point_outside(picklejail_bin, tmp_path):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    res = run(picklejail_bin, "convert", src, tmp_path / "out", "--local")
    assert res.returncode == 1 and "malformed" in res.stderr and "not a file beside" in res.stderr


def test_sharded_index_must_match_the_shards(picklejail_bin, sharded, tmp_path):
    src, _ = sharded
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "pytorch_model-00001-of-00002.bin"
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    res = run(picklejail_bin, "convert", src / "pytorch_model.bin.index.json", tmp_path / "o", "--local")
    assert res.returncode == 1 and "ghost.weight" in res.stderr


def test_tiny_file_cannot_ask_for_a_huge_image(picklejail_bin, tmp_path):
    """A stride-0 view of one float, expanded to 400 MB: refused by max_output_ratio."""
    if torch is None:
        pytest.skip("needs torch")
    src = tmp_path / "expanded.pt"
    torch.save({"x": torch.zeros(1).expand(100_000_000)}, src)
    assert src.stat().st_size < 4096
    res = run(picklejail_bin, "convert", src, tmp_path / "x.st", "--local")
    assert res.returncode == 1 and "too_large" in res.stderr and "max_output_ratio" in res.stderr
    small = tmp_path / "small_expand.pt"
    torch.save({"x": torch.zeros(1).expand(1000)}, small)  # legitimate and small: converts
    assert run(picklejail_bin, "convert", small, tmp_path / "s.st", "--local").returncode == 0
