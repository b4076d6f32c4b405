"""Fixtures for the hostile-input suite.

Run with Debian's interpreter (any python3 with pytest works; torch is not needed):
    PICKLEJAIL_BIN=build/bin/picklejail /usr/bin/python3 -m pytest tests/hostile

`convert_one` is parametrized over the converters named in
PICKLEJAIL_HOSTILE_CONVERTERS (see converters.py), so the same files and
expectations run through every way picklejail can be driven. Where the
environment variable CI is set (CI=true), a converter whose binary is missing
fails the suite instead of skipping it.
"""

import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import converters  # noqa: E402
import generate  # noqa: E402

RESULTS = defaultdict(list)  # converter name -> [(source, file, code, seconds)]


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory):
    """Every generated hostile file, written once per session."""
    out = tmp_path_factory.mktemp("hostile")
    generate.generate(out)
    return out


@pytest.fixture(scope="session", params=converters.selected())
def convert_one(request, tmp_path_factory):
    name = request.param
    factory = converters.FACTORIES.get(name)
    if factory is None:
        pytest.fail(f"unknown converter {name!r} (known: {sorted(converters.FACTORIES)})")
    try:
        convert = factory(tmp_path_factory.mktemp(f"conv-{name}"))
    except converters.ConverterUnavailable as e:
        # CI builds every binary: there a missing one is a broken build.
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set, so a missing converter fails instead of skipping: {e}")
        pytest.skip(str(e))

    def run(path, source, **kw):
        outcome = convert(path, **kw)
        RESULTS[name].append((source, Path(path).name, outcome.code, outcome.seconds))
        return outcome

    run.converter_name = name
    return run


def pytest_terminal_summary(terminalreporter):
    for name, rows in RESULTS.items():
        if not rows:
            continue
        tr = terminalreporter
        tr.section(f"hostile suite through {name!r}")
        for source in sorted({r[0] for r in rows}):
            mine = [r for r in rows if r[0] == source]
            codes = Counter(r[2] for r in mine)
            total = sum(r[3] for r in mine)
            slowest = max(mine, key=lambda r: r[3])
            tr.write_line(f"{source}: {len(mine)} files, {total:.1f} s total, slowest "
                          f"{slowest[1]} {slowest[3]:.2f} s")
            tr.write_line("  codes: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
