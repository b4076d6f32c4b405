"""Checking and indexing a safetensors image before anything is built from it.

The image comes from another process (the daemon, or the local worker via the
`picklejail` command). Both are meant to be trustworthy, but the client does
not depend on it: every offset, size and name is checked here, and the object
description may only refer to tensors the image really holds. After
`parse_image` succeeds, building tensors is plain slicing that cannot go out
of bounds.
"""

import json
import operator
import re
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from .dtypes import COMPLEX128, DTYPES, STORED_AS
from .errors import Malformed

# The reference implementation's cap on the JSON header.
MAX_HEADER_BYTES = 100 * 1024 * 1024
META_OBJECT = "picklejail.object"
META_COMPLEX128 = "picklejail.complex128"
META_SOURCE = "picklejail.source_format"
META_PREFIX = "picklejail."
META_FORMAT = "format"
# The keys-only form of a state dict in the description (docs/output-format.md).
ODICT_OF_TENSORS = "odict_of_tensors"
DICT_OF_TENSORS = "dict_of_tensors"
# The loader nests at most 1,000 containers (max_nesting_depth); each takes up
# to three JSON levels ({"dict": [[key, value]]}). Python's default recursion
# limit (1,000) would refuse such a description, so parsing gets more room.
RECURSION_ROOM = 4 * 1000 + 500


def _fail(message):
    raise Malformed("malformed", message)


class TensorEntry:
    """One stored tensor: where its bytes are in the data section and how to view them.

    A slotted class rather than a frozen dataclass: one is made per tensor, and
    a frozen dataclass's __init__ costs three times as much.
    """

    __slots__ = ("name", "dtype", "shape", "begin", "end", "numel")

    def __init__(self, name, dtype, shape, begin, end, numel):
        self.name = name    # the stored name
        self.dtype = dtype  # a dtypes.DType; dtypes.COMPLEX128 for complex128 tensors
        self.shape = shape  # a tuple (complex128: without the stored trailing 2)
        self.begin = begin  # byte offsets within the data section
        self.end = end
        self.numel = numel  # elements of dtype

    def __repr__(self):
        return (f"TensorEntry({self.name!r}, {self.dtype.name}, {self.shape}, "
                f"{self.begin}..{self.end})")


@dataclass
class Image:
    """A checked image: the mapping plus everything needed to rebuild the object."""
    buffer: Any            # the mapping; tensors are views into it
    data_offset: int       # where the data section starts in `buffer`
    data_size: int
    tensors: dict          # stored name -> TensorEntry, in header order
    in_data_order: list    # the same entries by position in the data section
    aliases: dict          # alias name -> stored name
    metadata: dict         # the whole __metadata__
    description: Any       # the parsed picklejail.object tree
    tensor_ids: dict       # description "id" -> stored name (tensors this image holds)
    devices: dict          # stored name -> device it was saved on ("cpu" unless described)
    source_format: Optional[str]
    # mmap=True (mapped.py): tensors left in the checkpoint file, also in `tensors`,
    # whose begin/end are offsets in that file; and what the worker saw of it.
    file_tensors: dict = field(default_factory=dict)
    file_identity: Optional[dict] = None


@contextmanager
def recursion_room(depth=RECURSION_ROOM):
    """Raise the recursion limit for deep (but legitimate) descriptions, then restore it."""
    before = sys.getrecursionlimit()
    if before < depth:
        sys.setrecursionlimit(depth)
    try:
        yield
    except RecursionError:
        _fail("the object description is nested too deeply")
    finally:
        if before < depth and sys.getrecursionlimit() == depth:
            sys.setrecursionlimit(before)


def _unique_keys(pairs):
    out = dict(pairs)  # built in C; a shorter dict means a repeated key
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                _fail(f"duplicate JSON key {key!r}")
            seen.add(key)
    return out


def _reject_constant(name):
    _fail(f"JSON holds {name}, which is not JSON")


def strict_json(text, what, *, unique_keys=True):
    """Parse JSON refusing NaN/Infinity literals and, unless told otherwise, duplicate keys.

    The header and the object description are parsed without the per-object hook,
    which costs a Python call per object (most of the time for files with many
    tensors): a repeated tensor name in the header leaves a hole in the data
    section, which _data_order refuses, and a repeated key inside a description
    node can only point at tensors that are checked like any other.
    """
    hook = _unique_keys if unique_keys else None
    try:
        with recursion_room():
            return json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant)
    except ValueError as error:  # JSONDecodeError, bad surrogates, ...
        _fail(f"{what} is not valid JSON: {error}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def matches_select(name, select):
    """The protocol's rule: equal, or a prefix followed by ".", or a prefix ending in "."."""
    for entry in select:
        if name == entry or name.startswith(entry + ".") or (
                entry.endswith(".") and name.startswith(entry)):
            return True
    return False


def _read_header(buffer, size):
    """(the parsed header object, where the data section starts)."""
    text, data_offset = _header_text(buffer, size)
    return _parse_header(text), data_offset


def _header_text(buffer, size):
    if size < 8:
        _fail(f"image of {size} bytes is shorter than the 8-byte header length")
    (length,) = struct.unpack_from("<Q", buffer, 0)
    if length > MAX_HEADER_BYTES:
        _fail(f"header length {length} exceeds {MAX_HEADER_BYTES}")
    if length < 2 or 8 + length > size:
        _fail(f"header length {length} does not fit the image ({size} bytes)")
    try:
        text = str(memoryview(buffer)[8:8 + length], "utf-8")  # no intermediate copy
    except UnicodeDecodeError as error:
        _fail(f"header is not UTF-8: {error}")
    return text, 8 + length


def _parse_header(text):
    header = strict_json(text, "the header", unique_keys=False)
    if not isinstance(header, dict):
        _fail("header is not a JSON object")
    return header


# The header as picklejail's writer lays it out (docs/output-format.md): compact
# JSON, __metadata__ first, then entries {"dtype", "shape", "data_offsets"} in
# that order, then spaces. Matched column by column, it gives TensorEntries
# without a dict and two lists per tensor first: for 20,000 tensors that
# transient tree was ~3,300 freshly touched pages of the client's ~8,900. Any
# header this does not match exactly, or whose values fail a check, takes the
# general path (json.loads), which accepts the same headers and says what is
# wrong with the others.
_METADATA_START = '{"__metadata__":'
# A JSON integer below 2**63 (what the general path's checks allow); mapped.py
# reads the file ranges with it too.
JSON_INDEX = r"(?:0|[1-9][0-9]{0,17})"
# (The name is the unrolled form of (?:[^"\\]|\\.)*: one greedy run per escape, not one
# alternation per character.)
_ENTRY = re.compile(r',"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)":\{"dtype":"([A-Z0-9_]{1,16})",'
                    r'"shape":\[((?:' + JSON_INDEX + ",)*" + JSON_INDEX + r')?\],'
                    r'"data_offsets":\[(' + JSON_INDEX + "),(" + JSON_INDEX + r")\]\}")
_TRAILER = re.compile(r"\}[ \t\n\r]*\Z")
# The characters of one _ENTRY match outside its five groups.
_ENTRY_FIXED = len(',"":{"dtype":"","shape":[],"data_offsets":[,]}')


def _writer_layout_entries(text, data_size):
    """(metadata, tensors, tiled) as parse_image's general path gives them, or None.

    Column by column rather than entry by entry: one findall, then C-level maps
    and comparisons over the columns, so 20,000 tensors cost a few list passes
    instead of 20,000 rounds of Python (the matches tile the entries' span
    exactly when their lengths add up to it, since findall never overlaps).
    """
    if not text.startswith(_METADATA_START):
        return None
    try:
        metadata, position = STRICT_DECODER.raw_decode(text, len(_METADATA_START))
    except ValueError:
        return None
    trailer = _TRAILER.search(text, position)
    if type(metadata) is not dict or trailer is None:
        return None
    rows = _ENTRY.findall(text, position, trailer.start())
    if not rows:
        return (metadata, {}, data_size == 0) if position == trailer.start() else None
    names, dtype_names, shape_texts, begin_texts, end_texts = columns = list(zip(*rows))
    del rows
    if not columns_tile(columns, _ENTRY_FIXED, trailer.start() - position):
        return None  # something between or around the entries that is not one
    names = unescaped_names(names)
    dtypes = list(map(DTYPES.get, dtype_names))
    if names is None or None in dtypes or "__metadata__" in names:
        return None
    shapes, numels = shape_columns(shape_texts)
    begins, ends = list(map(int, begin_texts)), list(map(int, end_texts))
    sizes = list(map(operator.sub, ends, begins))
    if min(sizes) < 0 or max(ends) > data_size or \
            sizes != list(map(operator.mul, numels, (d.size for d in dtypes))):
        return None
    entries = dict(zip(names, map(TensorEntry, names, dtypes, shapes, begins, ends, numels)))
    if len(entries) != len(names):
        return None  # a repeated name: the general path finds the hole it leaves
    tiled = begins[0] == 0 and begins[1:] == ends[:-1] and ends[-1] == data_size
    return metadata, entries, tiled


def columns_tile(columns, fixed, span):
    """Whether findall's matches, as `columns` of their groups, cover `span` characters:
    each match is `fixed` characters besides its groups, and matches never overlap."""
    return len(columns[0]) * fixed + sum(sum(map(len, column)) for column in columns) == span


def unescaped_names(names):
    """JSON string contents with their escapes resolved, or None where one is invalid."""
    if not any("\\" in name for name in names):
        return names
    try:
        return [json.loads(f'"{name}"') if "\\" in name else name for name in names]
    except ValueError:
        return None


def shape_columns(shape_texts):
    """(shapes, numels) for the shape column, each distinct shape text parsed once."""
    parsed = {}
    for text in set(shape_texts):
        shape = tuple(map(int, text.split(","))) if text else ()
        numel = 1
        for d in shape:
            numel *= d
        parsed[text] = (shape, numel)
    pairs = list(map(parsed.__getitem__, shape_texts))
    return list(map(operator.itemgetter(0), pairs)), list(map(operator.itemgetter(1), pairs))


def _reject_constant_in_metadata(name):
    raise ValueError(f"{name} is not JSON")


# raw_decode of a part of a header or of the file ranges, refusing NaN/Infinity.
STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant_in_metadata)


_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))


def _tensor_entry(name, info, data_size):
    # Hot for files with many tensors: exact type checks (bool is not an int here).
    if type(info) is not dict or info.keys() != _ENTRY_KEYS:
        _fail(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
    dtype = info["dtype"]
    dtype = DTYPES.get(dtype) if type(dtype) is str else None
    if dtype is None:
        _fail(f"tensor {name!r}: unknown dtype {info['dtype']!r}")
    shape = info["shape"]
    if type(shape) is not list:
        _fail(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:
            _fail(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        numel *= d
    offsets = info["data_offsets"]
    if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int or \
            type(offsets[1]) is not int:
        _fail(f"tensor {name!r}: data_offsets {offsets!r} is not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        _fail(f"tensor {name!r}: data_offsets {begin}..{end} outside the data section "
              f"({data_size} bytes)")
    if end - begin != numel * dtype.size:
        _fail(f"tensor {name!r}: {end - begin} bytes for {dtype.name}{list(shape)}")
    return TensorEntry(name, dtype, tuple(shape), begin, end, numel)


def _tensor_entries(header, data_size):
    """(stored name -> TensorEntry, whether the header order tiles the data section).

    Each entry is checked as _tensor_entry does. This runs once per tensor, so it
    is _tensor_entry inlined for entries that pass; anything that does not is
    handed to _tensor_entry, which says what is wrong. Writers list tensors in
    data order, so noting here whether each one starts where the last ended
    spares _data_order its own pass.
    """
    entries, dtypes = {}, DTYPES
    position, tiled = 0, True
    for name, info in header.items():
        if type(info) is not dict or len(info) != 3:
            _refuse(name, info, data_size)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        dtype = dtypes.get(dtype) if type(dtype) is str else None
        if dtype is None or type(shape) is not list or type(offsets) is not list or \
                len(offsets) != 2:
            _refuse(name, info, data_size)
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0:
                _refuse(name, info, data_size)
            numel *= d
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or \
                not 0 <= begin <= end <= data_size or end - begin != numel * dtype.size:
            _refuse(name, info, data_size)
        if begin != position:
            tiled = False
        position = end
        entries[name] = TensorEntry(name, dtype, tuple(shape), begin, end, numel)
    return entries, tiled and position == data_size


def _refuse(name, info, data_size):
    _tensor_entry(name, info, data_size)  # raises Malformed, saying what is wrong
    _fail(f"tensor {name!r}: malformed entry")  # the two checks agree: not reached


def _data_order(tensors, data_size, tiled):
    """The entries in data-section order, checked to cover it exactly.

    Contiguous, no overlap, no hole, nothing after the last tensor. `tiled`:
    the header order already does (see _tensor_entries).
    """
    entries = list(tensors.values())
    if tiled:
        return entries
    if any(a.begin > b.begin or (a.begin == b.begin and a.end > b.end)
           for a, b in zip(entries, entries[1:])):
        entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin != position:
            _fail(f"tensor {entry.name!r} starts at {entry.begin}, expected {position} "
                  "(hole or overlap in the data section)")
        position = entry.end
    if position != data_size:
        _fail(f"{data_size - position} bytes after the last tensor")
    return entries


def _split_metadata(metadata, tensors):
    """Check __metadata__ and return the aliases it holds (every key that is not ours)."""
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        _fail("__metadata__ must map strings to strings")
    aliases = {}
    for key, target in metadata.items():
        if key == META_FORMAT or key.startswith(META_PREFIX):
            continue
        if key in tensors:
            _fail(f"alias {key!r} is also a stored tensor")
        if target not in tensors:
            _fail(f"alias {key!r} refers to {target!r}, which the image does not hold")
        aliases[key] = target
    return aliases


def _apply_complex128(metadata, tensors):
    if META_COMPLEX128 not in metadata:
        return
    names = strict_json(metadata[META_COMPLEX128], META_COMPLEX128)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            len(set(names)) != len(names):
        _fail(f"{META_COMPLEX128} is not a list of distinct names")
    for name in names:
        entry = tensors.get(name)
        if entry is None:
            _fail(f"{META_COMPLEX128} names {name!r}, which the image does not hold")
        if entry.dtype.name != "F64" or not entry.shape or entry.shape[-1] != 2:
            _fail(f"complex128 tensor {name!r} is not stored as F64 with a trailing 2")
        tensors[name] = TensorEntry(name, COMPLEX128, entry.shape[:-1], entry.begin, entry.end,
                                    entry.numel // 2)


def _index_description(description, tensors, aliases, select):
    """Map every tensor node's id to the stored tensor it denotes, checking each node.

    Nodes with the same id are one tensor object, so they must resolve to the same
    stored tensor. A node may name an alias; with `select`, a node may also name a
    tensor that was not selected (and was therefore not written).
    """
    tensor_ids, devices, unresolved = {}, {}, []

    def check_dtype(node, stored):
        if tensors[stored].dtype.torch_name != node["dtype"]:
            _fail(f"tensor {node['tensor']!r} is described as {node['dtype']} but stored as "
                  f"{tensors[stored].dtype.torch_name}")

    # Iterative (the tree may be deep), with exact type checks: json.loads makes
    # only dict, list, str, int, float, bool and None, and this loop runs once
    # per node of a description that may hold a million tensors.
    stack = [description] if type(description) in (dict, list) else []
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if type(node) is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    push(item)
        elif "tensor" not in node:  # a dict: a container or scalar node
            if ODICT_OF_TENSORS in node or DICT_OF_TENSORS in node:
                _index_tensor_dict(node, tensors, aliases, tensor_ids, unresolved)
                children = (node.get("attrs"),)  # the keys list holds no nodes
            else:
                children = node.values()
            for item in children:
                if type(item) is dict or type(item) is list:
                    push(item)
        else:
            name, ident, dtype = node.get("tensor"), node.get("id"), node.get("dtype")
            if type(name) is not str or type(ident) is not int or ident < 0 or \
                    dtype not in STORED_AS:
                _fail(f"bad tensor node {json.dumps(node)[:200]}")
            if len(node) > 3:
                for flag in ("parameter", "requires_grad"):
                    if type(node.get(flag, False)) is not bool:
                        _fail(f"tensor {name!r}: {flag} is not a boolean")
                if type(node.get("device", "")) is not str:
                    _fail(f"tensor {name!r}: device is not a string")
            stored = name if name in tensors else aliases.get(name)
            if stored is None:
                unresolved.append(node)
                continue
            if tensors[stored].dtype.torch_name != dtype:
                check_dtype(node, stored)
            if tensor_ids.setdefault(ident, stored) != stored:
                _fail(f"tensor id {ident} denotes both {tensor_ids[ident]!r} and {stored!r}")
            if stored not in devices:
                devices[stored] = node.get("device", "cpu")

    for node in unresolved:
        stored = tensor_ids.get(node["id"])
        if stored is not None:
            if "dtype" in node:  # a dict_of_tensors entry takes the stored dtype
                check_dtype(node, stored)
        elif select is None or matches_select(node["tensor"], select):
            _fail(f"the description refers to tensor {node['tensor']!r}, which the image does "
                  "not hold")
    return tensor_ids, devices


def tensor_dict_entries(node):
    """(keys, first id, name prefix) of a dict_of_tensors / odict_of_tensors node.

    Entry i is the tensor node {"tensor": prefix + keys[i], "id": first + i}
    with the stored tensor's dtype, on the CPU, without flags. parse_image
    checks every such node (_checked_tensor_dict) before anything is rebuilt.
    """
    keys = node[ODICT_OF_TENSORS] if ODICT_OF_TENSORS in node else node[DICT_OF_TENSORS]
    return keys, node.get("first_id"), node.get("prefix", "")


def _checked_tensor_dict(node):
    keys, first, prefix = tensor_dict_entries(node)
    if type(keys) is not list or not all(type(key) is str for key in keys):
        _fail("a dict_of_tensors node does not hold a list of string keys")
    if type(first) is not int or first < 0 or type(prefix) is not str:
        _fail("a dict_of_tensors node needs a first_id >= 0 and a string prefix")
    return keys, first, prefix


def _index_tensor_dict(node, tensors, aliases, tensor_ids, unresolved):
    """_index_description for one dict_of_tensors node: a whole state dict at C speed.

    Entries are on the CPU, which is the default of Image.devices, so only ids
    are recorded. Ids that other nodes already use take the per-entry path.
    """
    keys, first, prefix = _checked_tensor_dict(node)
    names = [prefix + key for key in keys] if prefix else keys
    stored = [name if name in tensors else aliases.get(name) for name in names]
    ids = range(first, first + len(keys))
    if None not in stored and tensor_ids.keys().isdisjoint(ids):
        tensor_ids.update(zip(ids, stored))
        return
    for ident, name, target in zip(ids, names, stored):
        if target is None:
            unresolved.append({"tensor": name, "id": ident})
        elif tensor_ids.setdefault(ident, target) != target:
            _fail(f"tensor id {ident} denotes both {tensor_ids[ident]!r} and {target!r}")


def parse_image(buffer, size, *, select=None):
    """Check the image in `buffer` (`size` bytes) and index it.

    `select` is the list sent with the request: tensors outside it may be missing.
    Raises Malformed on any inconsistency.
    """
    text, data_offset = _header_text(buffer, size)
    data_size = size - data_offset
    known = _writer_layout_entries(text, data_size)
    if known is not None:
        metadata, tensors, tiled = known
    else:
        header = _parse_header(text)
        metadata = header.pop("__metadata__", {})
        tensors, tiled = _tensor_entries(header, data_size)
        del header
    del text  # the header's second copy, freed before anything is built
    file_identity, file_tensors = _file_ranges(metadata, tensors)
    tensors.update(file_tensors)
    aliases = _split_metadata(metadata, tensors)
    _apply_complex128(metadata, tensors)
    if file_tensors:
        file_tensors = {name: tensors[name] for name in file_tensors}  # complex128 applied
        own = {n: e for n, e in tensors.items() if n not in file_tensors}
        in_data_order = _data_order(own, data_size, tiled)
    else:
        in_data_order = _data_order(tensors, data_size, tiled)
    if META_OBJECT not in metadata:
        _fail(f"__metadata__ has no {META_OBJECT} description")
    description = strict_json(metadata[META_OBJECT], META_OBJECT, unique_keys=False)
    tensor_ids, devices = _index_description(description, tensors, aliases, select)
    return Image(buffer=buffer, data_offset=data_offset, data_size=data_size, tensors=tensors,
                 in_data_order=in_data_order, aliases=aliases, metadata=metadata, description=description,
                 tensor_ids=tensor_ids, devices=devices, source_format=metadata.get(META_SOURCE),
                 file_tensors=file_tensors, file_identity=file_identity)


def _file_ranges(metadata, tensors):
    if not isinstance(metadata, dict) or "picklejail.file_ranges" not in metadata:
        return None, {}
    from .mapped import file_range_entries  # only mmap=True images have ranges
    return file_range_entries(metadata, tensors)
