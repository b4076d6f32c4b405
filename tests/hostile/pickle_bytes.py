"""Opcode-level builders for hostile pickles and torch containers.

Everything here assembles bytes by hand (struct, zipfile, zlib). Nothing is
ever pickled from a live object and nothing is ever unpickled: the files these
helpers produce are malware samples for picklejail only.
"""

import io
import struct
import zipfile

# ---------------------------------------------------------------- opcodes
MARK = b"("
STOP = b"."
POP = b"0"
POP_MARK = b"1"
DUP = b"2"
NONE = b"N"
NEWTRUE = b"\x88"
NEWFALSE = b"\x89"
EMPTY_TUPLE = b")"
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
TUPLE3 = b"\x87"
EMPTY_LIST = b"]"
LIST = b"l"
APPEND = b"a"
APPENDS = b"e"
EMPTY_DICT = b"}"
DICT = b"d"
SETITEM = b"s"
SETITEMS = b"u"
EMPTY_SET = b"\x8f"
ADDITEMS = b"\x90"
FROZENSET = b"\x91"
REDUCE = b"R"
BUILD = b"b"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
OBJ = b"o"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"
BINPERSID = b"Q"


def proto(version: int) -> bytes:
    return b"\x80" + bytes([version])


PROTO2 = proto(2)
PROTO4 = proto(4)


def _text(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def glob(module, name) -> bytes:
    """GLOBAL 'module\\nname\\n' (protocol 0+)."""
    return b"c" + _text(module) + b"\n" + _text(name) + b"\n"


def inst(module, name) -> bytes:
    """INST: callable named inline, arguments since the last MARK."""
    return b"i" + _text(module) + b"\n" + _text(name) + b"\n"


def binunicode(text) -> bytes:
    raw = _text(text)
    return b"X" + struct.pack("<I", len(raw)) + raw


def short_binunicode(text) -> bytes:
    raw = _text(text)
    assert len(raw) < 256
    return b"\x8c" + bytes([len(raw)]) + raw


def binunicode8(text) -> bytes:
    raw = _text(text)
    return b"\x8d" + struct.pack("<Q", len(raw)) + raw


def short_binstring(text) -> bytes:
    raw = _text(text)
    assert len(raw) < 256
    return b"U" + bytes([len(raw)]) + raw


def binstring(text) -> bytes:
    raw = _text(text)
    return b"T" + struct.pack("<i", len(raw)) + raw


def text_string(text: str) -> bytes:
    """Protocol-0 STRING: a quoted repr on one line."""
    return b"S'" + text.encode("ascii") + b"'\n"


def text_unicode(text: str) -> bytes:
    """Protocol-0 UNICODE (raw-unicode-escape) on one line."""
    return b"V" + text.encode("ascii") + b"\n"


def short_binbytes(raw: bytes) -> bytes:
    assert len(raw) < 256
    return b"C" + bytes([len(raw)]) + raw


def binbytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def encode_long(value: int) -> bytes:
    """Minimal little-endian two's complement, as pickle's LONG1/LONG4 store it."""
    if value == 0:
        return b""
    length = (value.bit_length() + 8) // 8
    raw = value.to_bytes(length, "little", signed=True)
    if value < 0 and length > 1 and raw[-1] == 0xFF and (raw[-2] & 0x80):
        raw = raw[:-1]
    return raw


def long1(value: int) -> bytes:
    raw = encode_long(value)
    assert len(raw) < 256
    return b"\x8a" + bytes([len(raw)]) + raw


def long4_raw(raw: bytes) -> bytes:
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def integer(value: int) -> bytes:
    """The opcode CPython's protocol-2 pickler would pick."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    return long1(value)


def binput(index: int) -> bytes:
    return b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)


def binget(index: int) -> bytes:
    return b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)


def long_binput(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def long_binget(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def frame(payload: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(payload)) + payload


def tup(*items: bytes) -> bytes:
    if not items:
        return EMPTY_TUPLE
    return MARK + b"".join(items) + TUPLE


def int_tuple(values) -> bytes:
    return tup(*(integer(v) for v in values))


def call(callee: bytes, *args: bytes) -> bytes:
    """callee(*args) through REDUCE."""
    return callee + tup(*args) + REDUCE


def lst(*items: bytes) -> bytes:
    if not items:
        return EMPTY_LIST
    return EMPTY_LIST + MARK + b"".join(items) + APPENDS


def dct(pairs) -> bytes:
    """A plain dict from [(key_bytes, value_bytes)]."""
    body = b"".join(k + v for k, v in pairs)
    return EMPTY_DICT + (MARK + body + SETITEMS if pairs else b"")


def str_dict(pairs) -> bytes:
    return dct([(binunicode(k), v) for k, v in pairs])


def ordered_dict(pairs=()) -> bytes:
    """collections.OrderedDict() then SETITEMS, as CPython pickles a state_dict."""
    body = b"".join(binunicode(k) + v for k, v in pairs)
    od = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    return od + (MARK + body + SETITEMS if pairs else b"")


def pickle_of(body: bytes, protocol: int = 2) -> bytes:
    return proto(protocol) + body + STOP


# ---------------------------------------------------------------- tensors
def storage_pid(key, numel, cls="FloatStorage", module="torch", location="cpu",
                legacy=False) -> bytes:
    """('storage', torch.<cls>, key, location, numel[, view_metadata]) + BINPERSID."""
    fields = [binunicode("storage"), glob(module, cls), binunicode(key), binunicode(location),
              numel if isinstance(numel, bytes) else integer(numel)]
    if legacy:
        fields.append(NONE)
    return tup(*fields) + BINPERSID


def contiguous_stride(shape):
    stride, acc = [], 1
    for dim in reversed(shape):
        stride.append(acc)
        acc *= max(dim, 1)
    return list(reversed(stride))


def rebuild_v2(storage: bytes, offset=0, size=(), stride=None, requires_grad=False,
               size_bytes=None, stride_bytes=None, offset_bytes=None, hooks=None,
               metadata=None) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, rg, hooks[, metadata])."""
    if stride is None:
        stride = contiguous_stride(size)
    args = [storage,
            offset_bytes if offset_bytes is not None else integer(offset),
            size_bytes if size_bytes is not None else int_tuple(size),
            stride_bytes if stride_bytes is not None else int_tuple(stride),
            NEWTRUE if requires_grad else NEWFALSE,
            hooks if hooks is not None else glob("collections", "OrderedDict") + EMPTY_TUPLE
            + REDUCE]
    if metadata is not None:
        args.append(metadata)
    return call(glob("torch._utils", "_rebuild_tensor_v2"), *args)


def tensor(key, shape, cls="FloatStorage", numel=None, offset=0, stride=None, legacy=False,
           **kw) -> bytes:
    """A tensor viewing storage `key` (numel defaults to the shape's element count)."""
    count = 1
    for dim in shape:
        count *= dim
    pid = storage_pid(key, count if numel is None else numel, cls=cls, legacy=legacy)
    return rebuild_v2(pid, offset, shape, stride, **kw)


def float_bytes(count: int, start: float = 0.0) -> bytes:
    return struct.pack("<%df" % count, *[start + i for i in range(count)])


# ---------------------------------------------------------------- containers
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def zip_bytes(entries, comment=b"") -> bytes:
    """entries: [(name, data, compress_type)] written in order, deterministic headers."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            info.create_system = 3
            archive.writestr(info, data)
        archive.comment = comment
    return out.getvalue()


def torch_zip(data_pkl: bytes, records=None, prefix="archive", byteorder=b"little",
              method=zipfile.ZIP_STORED, extra=(), pkl_method=None) -> bytes:
    """A torch.save-style archive: <prefix>/data.pkl, byteorder, data/<key>..., version."""
    entries = [(f"{prefix}/data.pkl", data_pkl,
                method if pkl_method is None else pkl_method)]
    if byteorder is not None:
        entries.append((f"{prefix}/byteorder", byteorder, zipfile.ZIP_STORED))
    for key, data in (records or {}).items():
        entries.append((f"{prefix}/data/{key}", data, method))
    entries.extend(extra)
    entries.append((f"{prefix}/version", b"3\n", zipfile.ZIP_STORED))
    return zip_bytes(entries)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_sys_info() -> bytes:
    return pickle_of(str_dict([
        ("protocol_version", integer(1001)),
        ("little_endian", NEWTRUE),
        ("type_sizes", str_dict([("short", integer(2)), ("int", integer(4)),
                                 ("long", integer(8))])),
    ]))


def legacy_stream(main_pickle: bytes, storages, keys=None, magic=None, protocol=None,
                  sys_info=None, keys_pickle=None, tail=b"") -> bytes:
    """The _legacy_save layout: magic, 1001, sys_info, main, sorted keys, then per key
    int64 element count + raw bytes. storages: [(key, element_count, raw_bytes)]."""
    magic = magic if magic is not None else pickle_of(long1(LEGACY_MAGIC))
    protocol = protocol if protocol is not None else pickle_of(integer(1001))
    sys_info = sys_info if sys_info is not None else legacy_sys_info()
    if keys_pickle is None:
        key_names = keys if keys is not None else [key for key, _, _ in storages]
        keys_pickle = pickle_of(lst(*(binunicode(k) for k in key_names)))
    body = b"".join(struct.pack("<q", count) + raw for _, count, raw in storages)
    return magic + protocol + sys_info + main_pickle + keys_pickle + body + tail


# ---------------------------------------------------------------- raw zip surgery
def find_all(data: bytes, needle: bytes):
    start = 0
    while True:
        pos = data.find(needle, start)
        if pos < 0:
            return
        yield pos
        start = pos + 1


def local_header(data: bytes, name: str) -> int:
    """Offset of the local header whose name is `name`."""
    raw = name.encode()
    for pos in find_all(data, b"PK\x03\x04"):
        n = struct.unpack_from("<H", data, pos + 26)[0]
        if data[pos + 30:pos + 30 + n] == raw:
            return pos
    raise KeyError(name)


def central_header(data: bytes, name: str) -> int:
    raw = name.encode()
    for pos in find_all(data, b"PK\x01\x02"):
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + n] == raw:
            return pos
    raise KeyError(name)


def eocd(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def patch(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw):]


def patch_u16(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<H", value))


def patch_u32(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<I", value))
