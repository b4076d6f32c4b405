"""The shipped systemd units pass `systemd-analyze verify` without a single warning."""

import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_support import daemon_binary

UNITS = daemon_binary().parent.parent / "share" / "picklejail" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify_cleanly(tmp_path):
    assert (UNITS / "picklejail.service").is_file(), f"configure the build first: {UNITS}"
    # verify insists that ExecStart exists, so point it at the build tree.
    service = (UNITS / "picklejail.service").read_text()
    lines = [f"ExecStart={daemon_binary()} --config /etc/picklejail/picklejaild.json"
             if line.startswith("ExecStart=") else line for line in service.splitlines()]
    (tmp_path / "picklejail.service").write_text("\n".join(lines) + "\n")
    shutil.copy(UNITS / "picklejail.socket", tmp_path / "picklejail.socket")
    res = subprocess.run(["systemd-analyze", "verify", "picklejail.socket", "picklejail.service"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", \
        f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"


def test_service_keeps_what_the_spawner_needs():
    service = (UNITS / "picklejail.service").read_text()
    filters = " ".join(l.split("=", 1)[1] for l in service.splitlines()
                       if l.startswith("SystemCallFilter="))
    for needed in ("@system-service", "seccomp", "@mount", "pivot_root"):
        assert needed in filters.split(), needed
    for setting in ("Type=notify", "ProtectSystem=strict", "PrivateNetwork=yes",
                    "NoNewPrivileges=yes", "MemoryMax=", "TasksMax="):
        assert setting in service, setting
    # systemd enforces RestrictNamespaces= by failing clone3, which the spawner needs.
    assert not any(l.startswith("RestrictNamespaces=") for l in service.splitlines())
