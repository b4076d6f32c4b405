"""Shared fixtures: where the picklejail binary is, and how to run `convert`.

Run with Debian's interpreter, which has torch 1.13:
    /usr/bin/python3 -m pytest tests/python
Set PICKLEJAIL_BIN to test a binary other than <repo>/build/bin/picklejail.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# Generous: the converter forks a sandboxed worker, and sanitizer builds are slow.
CONVERT_TIMEOUT_S = 120


def _binary_path():
    env = os.environ.get("PICKLEJAIL_BIN")
    if env:
        return Path(env), "PICKLEJAIL_BIN"
    return REPO / "build" / "bin" / "picklejail", "the default build location"


@pytest.fixture(scope="session")
def picklejail_bin():
    path, source = _binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"picklejail binary not found: {path} (from {source}); "
                    "build it (cmake -B build && cmake --build build) or set PICKLEJAIL_BIN")
    return path


@pytest.fixture
def convert(picklejail_bin):
    """Run `picklejail convert IN OUT [ARGS...]`; returns the CompletedProcess (text mode)."""
    def run(src, dst, *args):
        return subprocess.run(
            [str(picklejail_bin), "convert", str(src), str(dst), *map(str, args)],
            capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    return run
