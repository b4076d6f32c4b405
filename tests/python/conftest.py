"""Shared fixtures: where the picklejail binary is, and how to run `convert`.

Run with Debian's interpreter, which has torch 1.13:
    /usr/bin/python3 -m pytest tests/python
Set PICKLEJAIL_BIN to test a binary other than <repo>/build/bin/picklejail.

Where the environment variable CI is set (CI=true), a test that would be
skipped because a binary it needs is missing (ours, such as picklejail or
picklejaild, or a tool such as systemd-analyze, node or pkg-config) fails
instead: CI builds and installs everything, so a missing binary there is a
broken build, not a reason to pass. A skip counts as "a binary is missing" when
its reason matches MISSING_BINARY, so skip reasons for that case must say so
("... not found", "... not built", "... not installed", "... not on PATH",
"... missing").
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# Generous: the converter forks a sandboxed worker, and sanitizer builds are slow.
CONVERT_TIMEOUT_S = 120

MISSING_BINARY = re.compile(
    r"not built|not found|not installed|not on PATH|\bmissing\b|no configured build tree")


def in_ci():
    """CI=true (any value but empty, 0, false or no) makes missing binaries failures."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _binary_path():
    env = os.environ.get("PICKLEJAIL_BIN")
    if env:
        return Path(env), "PICKLEJAIL_BIN"
    return REPO / "build" / "bin" / "picklejail", "the default build location"


@pytest.fixture(scope="session")
def picklejail_bin():
    path, source = _binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        reason = (f"picklejail binary not found: {path} (from {source}); "
                  "build it (cmake -B build && cmake --build build) or set PICKLEJAIL_BIN")
        if in_ci():
            pytest.fail(f"CI is set: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def convert(picklejail_bin):
    """Run `picklejail convert IN OUT [ARGS...]`; returns the CompletedProcess (text mode)."""
    def run(src, dst, *args):
        return subprocess.run(
            [str(picklejail_bin), "convert", str(src), str(dst), *map(str, args)],
            capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    return run


def _skip_reason(report):
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])
    return str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, turn a skip for a missing binary (however the test skipped:
    skipif mark, pytest.skip in a fixture or the test) into a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if MISSING_BINARY.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI is set, so a missing binary fails instead of skipping: {reason}"
