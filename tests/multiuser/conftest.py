"""Fixtures of the multi-user suite (run as root: /usr/bin/python3 -m pytest tests/multiuser).

The daemon binary is $PICKLEJAILD_BIN, else dirname($PICKLEJAIL_BIN)/picklejaild,
else build/bin/picklejaild; its policies are <bin>/../share/picklejail/policies.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mu_support  # noqa: E402
from mu_support import MiB, MUDaemon, daemon_binary  # noqa: E402


def _why_skip():
    if os.geteuid() != 0:
        return ("the multi-user suite runs picklejaild as root and acts as other uids "
                "(setresuid); run it as root")
    binary = daemon_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return (f"picklejaild not built at {binary} (set PICKLEJAILD_BIN, or PICKLEJAIL_BIN "
                "to a picklejail binary beside it, or build into build/bin)")
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_skip()
    if reason is None:
        return
    here = str(Path(__file__).resolve().parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def world():
    """A directory every uid can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pjmu-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ckpts(world):
    """Checkpoints made with torch (see mu_support.GENERATOR), world-readable."""
    directory = world / "ckpt"
    directory.mkdir()
    directory.chmod(0o755)
    failure = mu_support.make_checkpoints(directory)
    if failure:
        pytest.skip(f"cannot make test checkpoints with torch under {sys.executable}: {failure}")
    slow = directory / "slow.pkl"
    slow.write_bytes(mu_support.slow_pickle(3_000_000))
    slow.chmod(0o644)
    return directory


SHARED_ARGS = ("--max-workers", 2, "--cache-bytes", 300_000_000,
               "--max-connections-per-uid", 64, "--line-timeout", 2, "--write-timeout", 5,
               "--max-reply-bytes-per-uid", 32 * MiB)


@pytest.fixture(scope="session")
def shared_daemon(world, ckpts):
    """One long-lived daemon that several tests attack; the last test of the suite
    (test_mu_zz_leaks.py) checks that its fds and RSS came back near their start."""
    d = MUDaemon(world, *SHARED_ARGS, config=mu_support.SLOW_CONFIG, name="shared")
    # Warm up (policies, the first worker, allocator arenas) before the baseline figures.
    for path in (mu_support.FIXTURES / "torch-2.11" / "cnn_state_dict.pt",
                 mu_support.FIXTURES / "torch-2.11" / "params.pt"):
        for transport in ("memfd", "inline", "shm"):
            reply, _ = mu_support.one_request(d.socket_path, {"op": "load", "path": str(path),
                                                              "transport": transport})
            assert reply.get("ok"), reply
            if transport == "shm":
                d.request({"op": "release", "shm_name": reply["shm_name"]})
    d.wait_idle()
    d.start_fds = d.settled_fd_count()
    d.start_rss = d.rss()
    d.start_cache_entries = d.stats()["cache"]["entries"]
    yield d
    d.stop()
