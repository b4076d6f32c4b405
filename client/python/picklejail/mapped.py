"""mmap=True: tensors as views of the checkpoint file's own pages, as torch.load(mmap=True) makes.

The worker still parses and checks the whole file, but for tensors stored
verbatim in it (uncompressed, 64-byte aligned zip records, C-contiguous,
little-endian) it writes only their byte range in the file, under the
metadata key picklejail.file_ranges (docs/output-format.md); everything else
is copied into the image as usual. This module checks those ranges, checks
that the file this process maps is the one the worker saw (fstat identity,
size and times), maps it MAP_PRIVATE with PROT_READ|PROT_WRITE (copy-on-write
tensors, nothing written back; untouched pages stay the page cache's, shared
by every process mapping the file), and builds the tensors as views.

As with torch.load(mmap=True): a file changed in place after the load changes
the tensors' values, and one truncated under the mapping raises SIGBUS when a
tensor past the new end is read.
"""

import dataclasses
import mmap
import operator
import os
import re
import stat
from contextlib import contextmanager

from .dtypes import DTYPES
from .errors import Malformed, error_for
from .image import (JSON_INDEX, STRICT_DECODER, TensorEntry, columns_tile, shape_columns,
                    strict_json, unescaped_names)
from .source import Source

META_FILE_RANGES = "picklejail.file_ranges"
_IDENTITY_KEYS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")
_ENTRY_KEYS = frozenset(("dtype", "shape", "file_offsets"))


def _fail(message):
    raise Malformed("malformed", message)


@contextmanager
def source_for_mapping(source):
    """`source` as an fd this process holds for the whole load: the fd sent to the
    worker is the one mapped afterwards (a path is opened here, once)."""
    if source.fd is not None:
        yield source
        return
    try:
        fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        code = "denied" if error.errno in (1, 13) else "io_error"  # EPERM, EACCES
        raise error_for(code, f"cannot open {source.path}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error_for("io_error", f"{source.path} is not a regular file")
        yield Source(path=None, fd=fd, name=source.name)
    finally:
        os.close(fd)


def _identity(value):
    if type(value) is not dict or set(value) != set(_IDENTITY_KEYS) or not all(
            type(value[k]) is int for k in _IDENTITY_KEYS) or value["size"] < 0:
        _fail(f"{META_FILE_RANGES}: 'file' must hold the integers {', '.join(_IDENTITY_KEYS)}")
    return value


def _entry(name, info, file_size):
    if type(info) is not dict or info.keys() != _ENTRY_KEYS:
        _fail(f"mapped tensor {name!r}: entry must have exactly dtype, shape and file_offsets")
    dtype = DTYPES.get(info["dtype"]) if type(info["dtype"]) is str else None
    if dtype is None:
        _fail(f"mapped tensor {name!r}: unknown dtype {info['dtype']!r}")
    shape = info["shape"]
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        _fail(f"mapped tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    numel = 1
    for d in shape:
        numel *= d
    offsets = info["file_offsets"]
    if type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        _fail(f"mapped tensor {name!r}: file_offsets {offsets!r} is not two integers")
    begin, end = offsets
    if not 0 <= begin < end <= file_size:
        _fail(f"mapped tensor {name!r}: file_offsets {begin}..{end} outside the file "
              f"({file_size} bytes)")
    if end - begin != numel * dtype.size:
        _fail(f"mapped tensor {name!r}: {end - begin} bytes for {dtype.name}{shape}")
    if begin % dtype.size:
        _fail(f"mapped tensor {name!r}: offset {begin} is not aligned to its {dtype.size}-byte "
              "elements")
    return TensorEntry(name, dtype, tuple(shape), begin, end, numel)


def file_range_entries(metadata, stored):
    """(file identity, name -> TensorEntry with file offsets) from the image's metadata.

    (None, {}) when the image has no file ranges. `stored` holds the data section's
    entries: a name may be in one place only.
    """
    text = metadata.get(META_FILE_RANGES)
    if text is None:
        return None, {}
    if type(text) is not str:
        _fail(f"{META_FILE_RANGES} is not a string")
    known = _writer_range_entries(text, stored)
    return known if known is not None else _general_range_entries(text, stored)


def _general_range_entries(text, stored):
    """file_range_entries for any text: json.loads, then each entry checked."""
    # No per-object hook (a Python call per tensor): a repeated name keeps one
    # entry, which is checked like any other.
    ranges = strict_json(text, META_FILE_RANGES, unique_keys=False)
    if type(ranges) is not dict or set(ranges) != {"file", "tensors"} or \
            type(ranges["tensors"]) is not dict:
        _fail(f"{META_FILE_RANGES} must be an object with 'file' and 'tensors'")
    identity = _identity(ranges["file"])
    entries = {}
    for name, info in ranges["tensors"].items():
        if name in stored:
            _fail(f"tensor {name!r} is both in the image and mapped from the file")
        entries[name] = _entry(name, info, identity["size"])
    return identity, entries


# The ranges as the worker writes them (loader/file_ranges.cpp): compact JSON,
# {"file":{...},"tensors":{...}}, each entry {"dtype","shape","file_offsets"} in
# that order. Read as image.py reads the header: one findall and C-level passes
# over the columns instead of json.loads building a dict and two lists per
# tensor and a Python call checking each (for 20,000 tensors that made
# mmap=True slower than copying). Anything else, or anything failing a check,
# takes the general path, which accepts the same texts and says what is wrong.
_RANGES_START = '{"file":'
_TENSORS_KEY = ',"tensors":'
_RANGE_ENTRY = re.compile(
    r'([{,])"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)":\{"dtype":"([A-Z0-9_]{1,16})",'
    r'"shape":\[((?:' + JSON_INDEX + ",)*" + JSON_INDEX + r')?\],'
    r'"file_offsets":\[(' + JSON_INDEX + "),(" + JSON_INDEX + r")\]\}")
# The characters of one _RANGE_ENTRY match outside its six groups.
_RANGE_FIXED = len('"":{"dtype":"","shape":[],"file_offsets":[,]}')


def _writer_range_entries(text, stored):
    """(identity, entries) as _general_range_entries gives them, or None."""
    if not text.startswith(_RANGES_START) or not text.endswith("}}"):
        return None
    try:
        identity, position = STRICT_DECODER.raw_decode(text, len(_RANGES_START))
    except ValueError:
        return None
    if not text.startswith(_TENSORS_KEY, position) or type(identity) is not dict:
        return None
    start, stop = position + len(_TENSORS_KEY), len(text) - 2  # before "}}"
    if stop == start + 1 and text.startswith("{}}", start):  # no slice: the text is megabytes
        return _identity(identity), {}
    rows = _RANGE_ENTRY.findall(text, start, stop)
    if not rows:
        return None
    leads, names, dtype_names, shape_texts, begin_texts, end_texts = columns = list(zip(*rows))
    del rows
    if not columns_tile(columns, _RANGE_FIXED, stop - start) or leads[0] != "{" or \
            "{" in leads[1:]:
        return None  # something between the entries, or an entry where a comma belongs
    names = unescaped_names(names)
    dtypes = list(map(DTYPES.get, dtype_names))
    if names is None or None in dtypes or not stored.keys().isdisjoint(names):
        return None
    identity = _identity(identity)
    shapes, numels = shape_columns(shape_texts)
    begins, ends = list(map(int, begin_texts)), list(map(int, end_texts))
    element_sizes = [d.size for d in dtypes]
    sizes = list(map(operator.sub, ends, begins))
    if min(sizes) <= 0 or max(ends) > identity["size"] or \
            sizes != list(map(operator.mul, numels, element_sizes)) or \
            any(map(operator.mod, begins, element_sizes)):
        return None
    entries = dict(zip(names, map(TensorEntry, names, dtypes, shapes, begins, ends, numels)))
    if len(entries) != len(names):
        return None  # a repeated name: the general path keeps the last one
    return identity, entries


def map_checked_file(fd, identity):
    """A private, copy-on-write mapping of the file `fd`, after checking it is the
    file the worker checked: same device, inode, size, modification and change times."""
    info = os.fstat(fd)
    seen = {"dev": info.st_dev, "ino": info.st_ino, "size": info.st_size,
            "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}
    changed = [key for key in _IDENTITY_KEYS if seen[key] != identity[key]]
    if changed:
        raise error_for("io_error", "the checkpoint changed after the sandbox checked it ("
                        + ", ".join(f"{k} {identity[k]} -> {seen[k]}" for k in changed)
                        + "); load it again")
    if info.st_size == 0:
        return None
    return mmap.mmap(fd, info.st_size, flags=mmap.MAP_PRIVATE,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)


class MappedFileBuilder:
    """A backend builder (backends.py) whose stored arrays also include the file's tensors.

    The inner builder makes the image's own tensors from a copy of the image
    that lists only them; this one adds a view of the mapping per mapped
    tensor and places them as the inner builder's map_location says.
    """

    def __init__(self, builder, file_map):
        self._builder = builder
        self._file_map = file_map

    def __getattr__(self, name):  # tensor(), dtype(), device(), size(), name
        return getattr(self._builder, name)

    def stored_arrays(self, image):
        if not image.file_tensors:
            return self._builder.stored_arrays(image)
        own = {n: e for n, e in image.tensors.items() if n not in image.file_tensors}
        out = self._builder.stored_arrays(dataclasses.replace(image, tensors=own))
        if self._builder.name == "numpy":
            out.update(self._numpy_views(image.file_tensors))
        else:
            out.update(self._torch_views(image))
        return out

    def _numpy_views(self, entries):
        np = self._builder._np
        base = np.frombuffer(self._file_map, dtype=np.uint8)
        return {name: base[e.begin:e.end].view(np.dtype(e.dtype.numpy)).reshape(e.shape)
                for name, e in entries.items()}

    def _torch_views(self, image):
        builder = self._builder
        torch = builder._torch
        # One uint8 tensor over the whole mapping (writable: MAP_PRIVATE) and one
        # typed view of it per dtype; each tensor is then one slice of that view
        # (reshaped unless 1-D), not a byte slice viewed twice: every view is a
        # torch object with autograd view bookkeeping, and for 20,000 small
        # tensors the two extra ones per tensor made mmap=True slower than copying.
        base = torch.frombuffer(self._file_map, dtype=torch.uint8)
        typed, out = {}, {}
        for name, e in image.file_tensors.items():
            size = e.dtype.size
            view = typed.get(e.dtype)
            if view is None:
                whole = len(base) // size * size
                view = typed[e.dtype] = base[:whole].view(builder._torch_dtype(e))
            if e.begin % size:  # complex128 at an 8-byte offset: its bytes viewed as usual
                out[name] = base[e.begin:e.end].view(view.dtype).view(e.shape)
                continue
            tensor = view[e.begin // size:e.end // size]
            out[name] = tensor if len(e.shape) == 1 else tensor.view(e.shape)
        placement = builder._placement
        for name, saved in image.devices.items():
            if name in out and placement.target(saved).type != "cpu":
                out[name] = placement.move(out[name], saved)
        if placement.target("cpu").type != "cpu":
            for name in out:
                if name not in image.devices:
                    out[name] = placement.move(out[name], "cpu")
        return out
