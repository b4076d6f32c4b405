"""The client's two ways of reading an image header agree (client/python/picklejail/image.py).

parse_image reads a header laid out as picklejail's writer lays it out entry
by entry (fewer fresh pages per job, issue 17), and any other header with
json.loads. Both must accept exactly the same headers and give the same
entries: checked on real images of the shipped fixtures, on edge cases the
fast path takes, and on near misses it must hand to the general path.
"""

import json
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import picklejail  # noqa: E402
from picklejail import image as image_mod  # noqa: E402
from picklejail.errors import Malformed  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
ACCEPTED = ["cnn_state_dict.pt", "dtypes.pt", "int_keys.pt", "legacy_dtypes.pt", "many_tensors.pt",
            "params.pt", "views.pt", "list_top.pt", "protocol2.pt", "torchvision_squeezenet1_1.pt"]


def general(text, data_size):
    header = image_mod._parse_header(text)
    metadata = header.pop("__metadata__", {})
    tensors, tiled = image_mod._tensor_entries(header, data_size)
    return metadata, tensors, tiled


def as_tuples(result):
    metadata, tensors, tiled = result
    return metadata, [(k, e.name, e.dtype, e.shape, e.begin, e.end, e.numel)
                      for k, e in tensors.items()], tiled


def header_of(path):
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 0)
    return data[8:8 + length].decode(), len(data) - 8 - length


@pytest.mark.parametrize("name", ACCEPTED)
def test_writer_images_take_the_fast_path_with_the_same_result(name, tmp_path, picklejail_bin,
                                                               monkeypatch):
    monkeypatch.setenv("PICKLEJAIL_BIN", str(picklejail_bin))
    out = tmp_path / "image.safetensors"
    picklejail.convert(FIXTURES / "torch-2.11" / name, out, socket=False)
    text, data_size = header_of(out)
    fast = image_mod._writer_layout_entries(text, data_size)
    assert fast is not None, "a header picklejail wrote is not read by the fast path"
    assert as_tuples(fast) == as_tuples(general(text, data_size))


def header(entries, metadata=None, tail="   "):
    parts = [json.dumps({"__metadata__": metadata or {"format": "pt"}}, separators=(",", ":"))[:-1]]
    for name, dtype, shape, begin, end in entries:
        parts.append("," + json.dumps(name) + ":" + json.dumps(
            {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}, separators=(",", ":")))
    return "".join(parts) + "}" + tail


CASES = {
    "plain": (header([("a", "F32", [2, 3], 0, 24), ("b", "U8", [], 24, 25)]), 25),
    "escaped name": (header([("a\"b\\c\u00e9\U0001F600", "F16", [1], 0, 2)]), 2),
    "empty tensor": (header([("e", "F64", [0, 5], 0, 0), ("x", "I8", [1], 0, 1)]), 1),
    "no tensors": (header([]), 0),
    "not tiled": (header([("b", "U8", [1], 1, 2), ("a", "U8", [1], 0, 1)]), 2),
}
# Near misses: the general path decides (accepting or refusing), the fast one steps aside.
FALLBACKS = {
    "spaces": ('{"__metadata__": {}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
               1),
    "repeated name": (header([("a", "U8", [1], 0, 1), ("a", "U8", [1], 1, 2)]), 2),
    "metadata again": (header([("__metadata__", "U8", [1], 0, 1)]), 1),
    "metadata not first": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"__metadata__":{}}',
                           1),
    "big number": (header([("a", "U8", [1], 0, 10 ** 20)]), 1),
    "unknown dtype": (header([("a", "Q8", [1], 0, 1)]), 1),
    "wrong size": (header([("a", "F32", [2], 0, 4)]), 4),
    "outside": (header([("a", "U8", [2], 0, 2)]), 1),
    "keys reordered": ('{"__metadata__":{},"a":{"shape":[1],"dtype":"U8","data_offsets":[0,1]}}', 1),
    "extra key": ('{"__metadata__":{},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', 1),
    "bad escape": ('{"__metadata__":{},"a\\q":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1),
    "NaN in metadata": ('{"__metadata__":{"x":NaN}}', 0),
    "trailing junk": (header([("a", "U8", [1], 0, 1)], tail=" x"), 1),
    "negative": ('{"__metadata__":{},"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', 1),
    "leading zero": ('{"__metadata__":{},"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}', 1),
    "metadata list": ('{"__metadata__":[],"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_path_cases_match_the_general_path(case):
    text, data_size = CASES[case]
    fast = image_mod._writer_layout_entries(text, data_size)
    assert fast is not None
    assert as_tuples(fast) == as_tuples(general(text, data_size))


@pytest.mark.parametrize("case", FALLBACKS)
def test_near_misses_go_to_the_general_path(case):
    text, data_size = FALLBACKS[case]
    assert image_mod._writer_layout_entries(text, data_size) is None
    try:
        general(text, data_size)
    except Malformed:
        pass  # refused there, with its reason; parse_image refuses it the same way
