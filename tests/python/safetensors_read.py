"""A small, strict, independent safetensors reader for the tests.

Deliberately not the `safetensors` package: the tests should check the
converter's output against the file format itself. Layout: u64 little-endian
header length N, N bytes of JSON header, then the data section at 8 + N.
`read_raw` needs no torch; `load` builds torch tensors.
"""

import json
import struct
import sys

# safetensors dtype -> (element size in bytes, torch dtype attribute name)
DTYPES = {
    "BOOL": (1, "bool"),
    "U8": (1, "uint8"),
    "I8": (1, "int8"),
    "I16": (2, "int16"),
    "U16": (2, "uint16"),
    "I32": (4, "int32"),
    "U32": (4, "uint32"),
    "I64": (8, "int64"),
    "U64": (8, "uint64"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "F32": (4, "float32"),
    "F64": (8, "float64"),
    "C64": (8, "complex64"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


class FormatError(ValueError):
    """The file is not well-formed safetensors."""


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def read_raw(path):
    """Parse and validate a file.

    Returns (entries, metadata): entries maps name -> (dtype, shape, bytes),
    metadata is the `__metadata__` dict ({} when absent).
    """
    with open(path, "rb") as f:
        return parse_raw(f.read())


def parse_raw(blob):
    """read_raw over bytes already in memory (a mapped memfd, shm, inline bytes)."""
    blob = bytes(blob)
    if len(blob) < 8:
        raise FormatError("shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if n > MAX_HEADER or 8 + n > len(blob):
        raise FormatError(f"header length {n} does not fit the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"header is not UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    data = blob[8 + n:]

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings")

    entries, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{name}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise FormatError(f"{name}: unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FormatError(f"{name}: bad shape {shape!r}")
        if not (0 <= begin <= end <= len(data)):
            raise FormatError(f"{name}: data_offsets {begin}..{end} outside the data section")
        if end - begin != _numel(shape) * DTYPES[dtype][0]:
            raise FormatError(f"{name}: {end - begin} bytes for {dtype}{shape}")
        entries[name] = (dtype, list(shape), data[begin:end])
        spans.append((begin, end, name))

    # The format requires the data section to be indexed fully, without holes or overlaps.
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise FormatError(f"{name}: starts at {begin}, expected {pos} (hole or overlap)")
        pos = end
    if pos != len(data):
        raise FormatError(f"{len(data) - pos} trailing bytes after the last tensor")
    return entries, metadata


def load(path):
    """Read a file as (tensors: name -> torch.Tensor, metadata)."""
    import torch

    if sys.byteorder != "little":
        raise RuntimeError("torch.frombuffer reads native byte order; this reader assumes little-endian")
    entries, metadata = read_raw(path)
    tensors = {}
    for name, (dtype, shape, raw) in entries.items():
        tdtype = getattr(torch, DTYPES[dtype][1], None)
        if tdtype is None:
            raise RuntimeError(f"{name}: this torch ({torch.__version__}) has no dtype for {dtype}")
        if not raw:  # frombuffer refuses empty buffers
            tensors[name] = torch.empty(shape, dtype=tdtype)
        else:
            # bytearray: writable and owned by the tensor, so no warning and no aliasing.
            tensors[name] = torch.frombuffer(bytearray(raw), dtype=tdtype).reshape(shape)
    return tensors, metadata
