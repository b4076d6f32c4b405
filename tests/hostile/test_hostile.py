"""Every generated hostile file and every public corpus file through picklejail.

For each file: the exact error code (or ok), the global or reason named in the
message, an end within the deadline, and never a crash. The generated files
come from generate.py (expectations inside it, also written as expected.tsv);
the public corpus is tests/hostile/corpus/ with its expectations in
corpus/EXPECTED.tsv, cross-checked against the corpus' own INDEX.tsv.
"""

import csv
import hashlib
import os
import struct
import subprocess
import sys
import json
from pathlib import Path

import pytest

import generate

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

# Sanitizer builds run several times slower: scripts/sanitize --hostile raises it.
DEADLINE_S = int(os.environ.get("PICKLEJAIL_HOSTILE_DEADLINE", "10"))
MEMORY_BYTES = 2 << 30
# Process start, worker spawn and a slow (sanitizer) build on a loaded machine.
SLACK_S = 5.0
CRASH_CODES = {"worker_crashed", "internal", "sandbox_violation", "timeout", "hung",
               "resource_exceeded", "io_error", "invalid_request"}

CASES = generate.build_cases()


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def corpus_expectations():
    if not (CORPUS / "EXPECTED.tsv").exists():
        return []
    return read_tsv(CORPUS / "EXPECTED.tsv")


CORPUS_ROWS = corpus_expectations()


def check_message(outcome):
    raw = outcome.message_bytes
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pytest.fail(f"message is not valid UTF-8: {raw[:200]!r}")
    bad = [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]
    assert not bad, f"message carries control characters {bad[:5]!r}: {text[:200]!r}"
    assert len(raw) <= 4096, f"message of {len(raw)} bytes"


def check_safetensors(image):
    if image is None:
        return
    assert len(image) >= 8
    (n,) = struct.unpack_from("<Q", image)
    assert 8 + n <= len(image) and (8 + n) % 64 == 0
    header = json.loads(image[8:8 + n])
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        end = max(end, entry["data_offsets"][1])
    assert 8 + n + end == len(image)


def check_outcome(outcome, code, contains, what):
    assert outcome.code not in CRASH_CODES or outcome.code == code, \
        f"{what}: {outcome.code}: {outcome.message}"
    assert outcome.code == code, f"{what}: expected {code}, got {outcome.code}: {outcome.message}"
    if contains and outcome.code != "ok":
        assert contains in outcome.message, \
            f"{what}: message does not name {contains!r}: {outcome.message}"
    assert outcome.seconds < DEADLINE_S + SLACK_S, f"{what}: took {outcome.seconds:.1f} s"
    check_message(outcome)
    if outcome.code == "ok":
        check_safetensors(outcome.output)


# ---------------------------------------------------------------- generated files
def case_param(case):
    marks = [pytest.mark.xfail(reason=case.known_bug, strict=True)] if case.known_bug else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_generated(case, hostile_dir, convert_one):
    outcome = convert_one(hostile_dir / case.name, "generated", policy=case.policy,
                          limits=case.limits or None, deadline_s=DEADLINE_S,
                          memory_bytes=MEMORY_BYTES)
    contains = "" if case.contains in ("", "-") else case.contains
    check_outcome(outcome, case.code, contains, f"{case.name} ({case.what})")


def test_generated_covers_every_class():
    assert len(CASES) >= 100
    seen = {c.cls for c in CASES}
    assert seen == set(generate.CLASSES), set(generate.CLASSES) ^ seen
    # The two training-job payloads the issue names.
    texts = [c.data for c in CASES if c.cls == "training_sabotage"]
    assert any(b"threading.Timer" in t and b"os.kill" in t for t in texts)
    assert any(b"all_reduce" in t for t in texts)
    # Every code-running family is expected to be refused naming its global.
    for case in CASES:
        if case.cls == "code_global":
            assert case.code == "forbidden_global" and case.contains


def test_every_case_has_one_exact_code():
    """No case accepts a choice of endings: each names the one code it must end with."""
    assert all(c.code in generate.CLEAN_CODES for c in CASES)
    flips = [c for c in CASES if c.name.startswith("flip_random_")]
    assert len(flips) == len(generate.FLIP_OUTCOMES) == 45
    # Every refusal among them names what it refused.
    assert all(c.contains not in ("", "-") for c in flips if c.code != "ok")


def test_expected_table_matches(hostile_dir):
    rows = read_tsv(hostile_dir / "expected.tsv")
    assert [r["file"] for r in rows] == [c.name for c in CASES]
    assert all((hostile_dir / r["file"]).is_file() for r in rows)


def test_generator_is_deterministic(hostile_dir, tmp_path):
    subprocess.run([sys.executable, str(HERE / "generate.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for case in CASES:
        a = hashlib.sha256((hostile_dir / case.name).read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / case.name).read_bytes()).hexdigest()
        assert a == b, case.name
    assert (hostile_dir / "expected.tsv").read_bytes() == (tmp_path / "expected.tsv").read_bytes()


# ---------------------------------------------------------------- public corpus
@pytest.mark.parametrize("row", CORPUS_ROWS, ids=[r["file"] for r in CORPUS_ROWS])
def test_corpus(row, convert_one):
    path = CORPUS / row["dir"] / row["file"]
    outcome = convert_one(path, "corpus", policy="weights", limits=None,
                          deadline_s=DEADLINE_S, memory_bytes=MEMORY_BYTES)
    contains = "" if row["contains"] in ("", "-") else row["contains"]
    check_outcome(outcome, row["code"], contains, f"{row['file']} ({row['why']})")


def test_corpus_expectations_cover_index():
    """EXPECTED.tsv has one row per corpus file and agrees with the corpus' own labels."""
    index = {}
    for sub in ("real", "derived"):
        for r in read_tsv(CORPUS / sub / "INDEX.tsv"):
            index[r["file"]] = (sub, r)
    expected = {r["file"]: r for r in CORPUS_ROWS}
    assert set(expected) == set(index), set(expected) ^ set(index)
    for name, (sub, r) in index.items():
        row = expected[name]
        assert row["dir"] == sub
        path = CORPUS / sub / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"], name
        label = r["what_it_does"].split(":")[0].split(" ")[0]
        if label in ("MALICIOUS", "DoS"):
            # Every malicious file is refused; where it names a global, so does picklejail.
            assert row["code"] != "ok", name
        if row["code"] == "ok":
            assert label in ("BENIGN", "SUSPICIOUS"), name
            assert r["pickle_layer_verdict"].startswith("accept"), name


# ---------------------------------------------------------------- the inert policy
# What inert keeps as data on purpose (docs/security.md, "What is deliberately not
# refused"): classes and a model's own modules become records, never objects.
INERT_KEEPS = {"builtins.object", "builtins.type", "torch.nn.Module", "functools.partial",
               "__main__.Exploit", "__torch__.Model",
               "sklearn.linear_model._logistic.LogisticRegression"}
CODE_CASES = [c for c in CASES if c.cls in ("code_global", "training_sabotage")
              and c.code == "forbidden_global"]


def image_globals(image):
    (n,) = struct.unpack_from("<Q", image)
    return json.loads(json.loads(image[8:8 + n])["__metadata__"]["picklejail.globals"])


@pytest.mark.parametrize("case", CODE_CASES, ids=[c.name for c in CODE_CASES])
def test_generated_code_under_inert(case, hostile_dir, convert_one):
    """Every code-running file is still refused by inert, except the names it keeps as data."""
    outcome = convert_one(hostile_dir / case.name, "generated", policy="inert",
                          limits=case.limits or None, deadline_s=DEADLINE_S,
                          memory_bytes=MEMORY_BYTES)
    if case.contains in INERT_KEEPS:
        check_outcome(outcome, "ok", "", f"{case.name} under inert ({case.what})")
        assert case.contains in image_globals(outcome.output)
    else:
        check_outcome(outcome, "forbidden_global", "", f"{case.name} under inert ({case.what})")


def test_inert_keeps_only_what_it_documents():
    kept = {c.contains for c in CODE_CASES} & INERT_KEEPS
    assert kept == INERT_KEEPS, INERT_KEEPS - kept


@pytest.mark.parametrize("row", CORPUS_ROWS, ids=[r["file"] for r in CORPUS_ROWS])
def test_corpus_under_inert(row, convert_one):
    """The public corpus under inert: nothing crashes or overruns, and a file weights refuses
    by a global is either refused or holds that global only as a name (a record or
    reference: picklejail.globals lists it, nothing resolved or called)."""
    path = CORPUS / row["dir"] / row["file"]
    outcome = convert_one(path, "corpus", policy="inert", limits=None,
                          deadline_s=DEADLINE_S, memory_bytes=MEMORY_BYTES)
    what = f"{row['file']} under inert ({row['why']})"
    assert outcome.code not in CRASH_CODES, f"{what}: {outcome.code}: {outcome.message}"
    assert outcome.seconds < DEADLINE_S + SLACK_S, f"{what}: took {outcome.seconds:.1f} s"
    check_message(outcome)
    if outcome.code == "ok":
        check_safetensors(outcome.output)
        if row["code"] == "forbidden_global" and row["contains"] not in ("", "-"):
            named = image_globals(outcome.output)
            assert any(row["contains"].startswith(g) or g.startswith(row["contains"])
                       for g in named), f"{what}: {row['contains']} not among {named}"
