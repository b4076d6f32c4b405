#!/usr/bin/env python3
"""Writes the seed inputs of one fuzz target into a directory (scripts/fuzz
calls it on every run; nothing here is committed twice).

    make_seeds.py TARGET OUTDIR [MAX_BYTES]

Seeds: the torch fixtures in tests/fixtures (whole files for the container
targets, their data.pkl records for the pickle VM), the hostile files from
tests/hostile/generate.py, for the safetensors checker a few images built here
by hand, and for the daemon's request parser protocol lines from
docs/protocol.md. Files larger than MAX_BYTES are skipped. Nothing is unpickled.
"""

import hashlib
import io
import json
import struct
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hostile"))


def fixtures():
    for path in sorted((REPO / "tests" / "fixtures").glob("torch-*/*.pt")):
        yield f"fixture-{path.parent.name}-{path.stem}", path.read_bytes()


def hostile():
    import generate  # noqa: E402  (assembles bytes only)
    for case in generate.build_cases():
        yield f"hostile-{case.name}", case.data


def pickles_in(name, data):
    """The pickle streams a fixture holds: its zip's *.pkl records, else the file itself."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    if info.filename.endswith(".pkl") and info.file_size < (1 << 20):
                        yield f"{name}-{Path(info.filename).name}", archive.read(info)
        except Exception:  # noqa: BLE001  (a damaged fixture is just not a seed)
            return
    else:
        yield name, data


def safetensors_image(tensors, metadata=None, align=8):
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset, blobs = 0, []
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-(8 + len(text))) % align)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds():
    yield "st-empty", safetensors_image([])
    yield "st-meta", safetensors_image([], {"format": "pt"})
    yield "st-one", safetensors_image([("w", "F32", [2, 3], bytes(24))], {"format": "pt"}, 64)
    yield "st-many", safetensors_image(
        [("a", "F64", [2], bytes(16)), ("b", "I8", [3], bytes(3)), ("c", "BOOL", [1], b"\x01"),
         ("d", "BF16", [0, 4], b""), ("e", "C64", [1], bytes(8)), ("f", "F8_E4M3", [2], bytes(2)),
         ("g.h", "U64", [1, 1], bytes(8))], {"alias": "a", "picklejail.object": "{}"})
    yield "st-escapes", safetensors_image([("\u00e9\\\"\n", "F16", [1], bytes(2))])


def request_seeds():
    """Protocol lines (docs/protocol.md), one per seed and a pipelined batch."""
    lines = [
        b'{"op":"ping"}\n',
        b'{"op":"stats","id":7}\n',
        b'{"op":"load","path":"/abs/model.pt","policy":"weights","transport":"memfd",'
        b'"select":["encoder."],"id":"a"}\n',
        b'{"op":"load","fd":true,"transport":"shm"}\n',
        b'{"op":"load","path":"/m.pt","transport":"inline","policy":"checkpoint"}\n',
        b'{"op":"inspect","path":"/abs/model.pt","select":["fc.weight"]}\n',
        b'{"op":"release","shm_name":"picklejail-1000-3f2a"}\n',
        b'{"op":"load","path":"\\u0000/x","id":[1,{"a":null}]}\n',
    ]
    for i, line in enumerate(lines):
        yield f"request-{i}", line
    yield "request-pipelined", b"".join(lines)


def main(argv):
    target, outdir = argv[1], Path(argv[2])
    limit = int(argv[3]) if len(argv) > 3 else 1 << 20
    outdir.mkdir(parents=True, exist_ok=True)
    if target == "fuzz_safetensors_check":
        seeds = list(safetensors_seeds())
    elif target == "fuzz_request_parser":
        seeds = list(request_seeds())
    elif target == "fuzz_pickle_vm":
        # data.pkl of the (trusted) fixtures; the hostile pickles as they are.
        seeds = [s for name, data in fixtures() for s in pickles_in(name, data)]
        seeds += [(name, data) for name, data in hostile() if data[:4] != b"PK\x03\x04"]
    else:
        seeds = list(fixtures()) + list(hostile())
    written = 0
    for name, data in seeds:
        if len(data) > limit:
            continue
        digest = hashlib.sha1(data).hexdigest()[:12]
        (outdir / f"{digest}-{name[:80]}").write_bytes(data)
        written += 1
    print(f"{target}: {written} seeds in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
