"""The shipped systemd units, as systemd reads them.

- `systemd-analyze verify` accepts both units without a single warning.
- The service, parsed with systemd's rules (sections; a repeated list setting
  adds to the list, an empty assignment clears it; a repeated scalar takes the
  last value), has exactly the value in HARDENING for every directive there, and
  none in ABSENT. Removing, widening or weakening any of them fails.
- docs/security.md §11 ("A hardened service") states some of these values;
  each one it states must be the value in HARDENING, so the document, the test
  and the unit say the same thing.
- `systemd-analyze security --offline` gives systemd's own judgement of each
  protection: every check in SYSTEMD_SAYS_SAFE must pass, and the overall
  exposure may not rise above EXPOSURE_CEILING.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon_support import daemon_binary

REPO = Path(__file__).resolve().parents[2]
UNITS = daemon_binary().parent.parent / "share" / "picklejail" / "systemd"
SECURITY_DOC = REPO / "docs" / "security.md"

# Settings systemd treats as lists: repeated assignments accumulate.
LIST_SETTINGS = {"SystemCallFilter", "CapabilityBoundingSet", "RestrictAddressFamilies",
                 "IPAddressDeny", "ReadWritePaths", "DeviceAllow", "AmbientCapabilities"}

# [Service] directive -> its exact value (a set of tokens for list settings).
HARDENING = {
    # The daemon tells systemd when it is ready; the socket unit hands it its listener.
    "Type": "notify",
    # Read-only everywhere but /dev/shm (the shm transport).
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "ReadWritePaths": {"/dev/shm"},
    "UMask": "0077",
    "DevicePolicy": "closed",
    "DeviceAllow": {"/dev/null rw"},
    # No network at all.
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": {"AF_UNIX"},
    "IPAddressDeny": {"any"},
    # Privileges: what spawning and confining workers needs, nothing more.
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": {"CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN", "CAP_KILL",
                              "CAP_CHOWN", "CAP_SETPCAP"},
    "AmbientCapabilities": set(),
    "SecureBits": "",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    # System calls: the service set plus what workers need before their own
    # filter (seccomp, mount, pivot_root, sethostname for the UTS namespace,
    # Landlock); the native architecture only.
    "SystemCallArchitectures": "native",
    "SystemCallFilter": {"@system-service", "@mount", "seccomp", "pivot_root", "sethostname",
                         "landlock_create_ruleset", "landlock_add_rule",
                         "landlock_restrict_self"},
    "SystemCallErrorNumber": "EPERM",
    # Resources for the daemon and all its workers together.
    "MemoryMax": "32G",
    "TasksMax": "512",
    "LimitNOFILE": "65536",
}

# systemd enforces RestrictNamespaces= by failing clone3 (ENOSYS), which the
# spawner needs for CLONE_PIDFD with new namespaces.
# RestrictSUIDSGID= fails openat2 (ENOSYS), which the daemon opens callers'
# paths with; ProtectHostname= refuses sethostname with a filter the workers
# inherit, and each names its own UTS namespace (both found by
# scripts/systemd-test under a real systemd: every load failed).
ABSENT = {"RestrictNamespaces", "RestrictSUIDSGID", "ProtectHostname"}

# Checks of `systemd-analyze security` (by their "name") that must pass.
SYSTEMD_SAYS_SAFE = [
    "NoNewPrivileges=", "ProtectSystem=", "PrivateNetwork=", "IPAddressDeny=",
    "RestrictAddressFamilies=~AF_(INET|INET6)", "RestrictAddressFamilies=~AF_PACKET",
    "RestrictAddressFamilies=~AF_NETLINK", "RestrictAddressFamilies=~…",
    "SystemCallArchitectures=", "MemoryDenyWriteExecute=", "LockPersonality=",
    "RestrictRealtime=", "AmbientCapabilities=", "UMask=",
    "ProtectKernelTunables=", "ProtectKernelModules=", "ProtectKernelLogs=",
    "ProtectControlGroups=", "ProtectClock=",
    "CapabilityBoundingSet=~CAP_SYS_PTRACE", "CapabilityBoundingSet=~CAP_SYS_MODULE",
    "CapabilityBoundingSet=~CAP_SYS_RAWIO", "CapabilityBoundingSet=~CAP_NET_ADMIN",
    "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)", "CapabilityBoundingSet=~CAP_BPF",
    "SystemCallFilter=~@debug", "SystemCallFilter=~@module", "SystemCallFilter=~@raw-io",
    "SystemCallFilter=~@reboot", "SystemCallFilter=~@swap", "SystemCallFilter=~@clock",
    "SystemCallFilter=~@obsolete", "SystemCallFilter=~@cpu-emulation",
]
# systemd's overall exposure for the unit, in its tenths (3.6 today, 3.4 before
# RestrictSUIDSGID= and ProtectHostname= were found to break loads; 10 is
# unprotected).
EXPOSURE_CEILING = 36


def parse_unit(text):
    """{section: {key: [raw values in order]}}, as systemd tokenizes a unit file."""
    sections = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # continuation: joined with a space
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a setting: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def effective(key, values):
    """What systemd makes of a key's assignments."""
    if key not in LIST_SETTINGS:
        return values[-1]
    tokens = set()
    for value in values:
        if value == "":
            tokens = set()  # an empty assignment resets the list
        elif key in ("DeviceAllow",):
            tokens.add(value)  # one "path perms" entry per assignment
        else:
            tokens.update(value.split())
    return tokens


def service_settings():
    path = UNITS / "picklejail.service"
    assert path.is_file(), f"configure the build first: {path}"
    sections = parse_unit(path.read_text())
    return {key: effective(key, values) for key, values in sections["Service"].items()}


def unit_dir_for_systemd(tmp_path):
    """The units, with ExecStart pointing at the build tree (systemd checks it exists)."""
    service = (UNITS / "picklejail.service").read_text()
    lines = [f"ExecStart={daemon_binary()} --config /etc/picklejail/picklejaild.json"
             if line.startswith("ExecStart=") else line for line in service.splitlines()]
    (tmp_path / "picklejail.service").write_text("\n".join(lines) + "\n")
    shutil.copy(UNITS / "picklejail.socket", tmp_path / "picklejail.socket")
    return tmp_path


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed")


@needs_systemd_analyze
def test_units_verify_cleanly(tmp_path):
    assert (UNITS / "picklejail.service").is_file(), f"configure the build first: {UNITS}"
    res = subprocess.run(["systemd-analyze", "verify", "picklejail.socket", "picklejail.service"],
                         cwd=unit_dir_for_systemd(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", \
        f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"


def test_parser_reads_systemd_semantics():
    """The parser itself: lists accumulate and reset, scalars take the last value."""
    sections = parse_unit("[Service]\n# c\nSystemCallFilter=a b\nSystemCallFilter=c\n"
                          "CapabilityBoundingSet=X\nCapabilityBoundingSet=\n"
                          "CapabilityBoundingSet=Y\nProtectSystem=full\nProtectSystem=strict\n"
                          "MemoryMax=1\\\n G\n")
    got = {k: effective(k, v) for k, v in sections["Service"].items()}
    assert got == {"SystemCallFilter": {"a", "b", "c"}, "CapabilityBoundingSet": {"Y"},
                   "ProtectSystem": "strict", "MemoryMax": "1 G"}


@pytest.mark.parametrize("key", sorted(HARDENING))
def test_service_hardening_directive(key):
    settings = service_settings()
    assert key in settings, f"{key}= was removed from the unit"
    assert settings[key] == HARDENING[key], f"{key}={settings[key]!r}, want {HARDENING[key]!r}"


def test_service_lacks_what_breaks_the_spawner():
    settings = service_settings()
    assert not ABSENT & set(settings), ABSENT & set(settings)


def security_section_11():
    text = SECURITY_DOC.read_text()
    start = text.find("11. **A hardened service.**")
    assert start >= 0, "docs/security.md has no §11 'A hardened service'"
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else len(text)]


def test_security_doc_states_what_the_unit_has():
    section = security_section_11()
    stated = re.findall(r"`([A-Za-z]+)=([^`]*)`", section)
    assert len(stated) >= 5, f"§11 states too few settings to check: {stated}"
    for key, value in stated:
        if key in ABSENT:
            assert "absent" in section, f"§11 names {key}= without saying it is absent"
            continue
        assert key in HARDENING, f"§11 states {key}=, which the test's table lacks"
        want = HARDENING[key]
        value = value.strip()
        if not value:
            continue  # "MemoryMax=": the doc says it is set, HARDENING pins the value
        if isinstance(want, set):
            tokens = [t for t in value.split() if t != "…"]
            assert set(tokens) <= want, f"§11 says {key}={value}, the unit has {sorted(want)}"
            if "…" not in value:
                assert set(tokens) == want, f"§11 says {key}={value}, the unit has {sorted(want)}"
        else:
            assert value == want, f"§11 says {key}={value}, the unit has {want}"
    # The capability bounding set is stated in words.
    caps = re.search(r"capability bounding set\s+of\s+((?:[A-Z_]+,\s+)*[A-Z_]+)\s+and\s+([A-Z_]+)",
                     section)
    assert caps, "§11 no longer states the capability bounding set"
    stated_caps = {"CAP_" + c for c in re.split(r",\s+", caps.group(1)) + [caps.group(2)]}
    assert stated_caps == HARDENING["CapabilityBoundingSet"]


@needs_systemd_analyze
def test_systemd_judges_the_service_hardened(tmp_path):
    units = unit_dir_for_systemd(tmp_path)
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--json=short",
                          "picklejail.service"], cwd=units, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    for name in SYSTEMD_SAYS_SAFE:
        assert name in checks, f"systemd-analyze security has no check {name!r}"
        assert checks[name]["set"] is True, f"{name}: {checks[name]['description']}"
    # --threshold fails (rc 1) when the overall exposure is above it.
    res = subprocess.run(["systemd-analyze", "security", "--offline=true",
                          f"--threshold={EXPOSURE_CEILING}", "picklejail.service"],
                         cwd=units, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout.splitlines()[-1:] or res.stderr
