"""Rebuilding the unpickled object from its JSON description (docs/output-format.md).

Only inert values are made: containers, scalars, strings, bytes, tensors, and
for the few allowed class instances either the class itself where that is
safe (argparse.Namespace) or a plain stand-in (`Record`). Nothing is imported
by name and nothing named in the file is called.
"""

import argparse
import base64
import collections
import math

from . import tensor_kinds
from .errors import Malformed
from .objects import ArrayKey, Global, Method, Record
from .image import recursion_room, tensor_dict_entries


# The names this module gave them before: GlobalRef is Global.
GlobalRef = Global


# A tensor that `select` left out: dropped from mappings, None in sequences.
_UNSELECTED = object()


class _LeftOut(Exception):
    """A sparse/quantized tensor's data tensor was left out by `select`."""

# Factories a defaultdict may name (the checkpoint policy's builtins.*), if the
# description says which; the default is no factory.
_DEFAULT_FACTORIES = {"list": list, "dict": dict, "int": int, "float": float, "str": str,
                      "tuple": tuple, "set": set}

_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _fail(message):
    raise Malformed("malformed", message)


def rebuild(image, builder):
    """The object `image` describes, with tensors made by `builder` (see backends.py)."""
    with recursion_room():
        return _Rebuilder(image, builder).value(image.description)


class _Rebuilder:
    def __init__(self, image, builder):
        self._image = image
        self._builder = builder
        self._stored = builder.stored_arrays(image)
        self._used = set()      # stored names already handed out
        self._by_id = {}        # description id -> the object for it
        self._shared_objects = []  # "shared" K -> the object made for it

    def value(self, node):
        """A node where an unselected tensor simply becomes None."""
        value = self.node(node)
        return None if value is _UNSELECTED else value

    def node(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return self._items(node)
        if isinstance(node, dict):
            for tag, handler in _TAGS:
                if tag in node:
                    return handler(self, node[tag], node)
            _fail(f"unknown node with keys {sorted(node)[:5]}")
        _fail(f"unexpected JSON value {node!r}")

    # ------------------------------------------------------------ containers

    def _items(self, nodes):
        if not isinstance(nodes, list):
            _fail("a sequence node does not hold a list")
        return [self.value(item) for item in nodes]

    def _pairs(self, pairs):
        # Runs once per entry of every dict (a state dict: once per tensor), so
        # the common entry, a string key and a tensor node, takes a short path;
        # json.loads makes only exact dicts, lists and strs, hence `type(...) is`.
        if type(pairs) is not list:
            _fail("a mapping node does not hold a list of pairs")
        tensor = self._tensor
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                _fail("a mapping entry is not a [key, value] pair")
            key, value = pair
            if type(key) is not str:
                key = self.value(key)
                if type(key).__name__ == "ndarray" and type(key).__module__ == "numpy":
                    key = ArrayKey(key)  # a Parameter key (optimizer state) under numpy
                try:
                    hash(key)
                except TypeError:
                    _fail(f"unhashable dict key of type {type(key).__name__}")
            if type(value) is dict and "tensor" in value:
                value = tensor(value["tensor"], value)
            else:
                value = self.node(value)
            if value is not _UNSELECTED:
                yield key, value

    def _fill(self, mapping, pairs, node):
        for key, value in self._pairs(pairs):  # not update(): Counter.update counts
            mapping[key] = value
        attrs = node.get("attrs")
        if attrs is not None:
            attributes = self.value(attrs)
            if not isinstance(attributes, dict) or not all(isinstance(k, str) for k in attributes):
                _fail("attrs is not a dict of attribute names")
            # Pickle's BUILD: the instance __dict__ (state_dict()._metadata). A
            # plain dict has none, and pickle would refuse the state too.
            if hasattr(mapping, "__dict__"):
                vars(mapping).update(attributes)
        return mapping

    def _dict(self, pairs, node):
        return self._fill({}, pairs, node)

    def _odict(self, pairs, node):
        return self._fill(collections.OrderedDict(), pairs, node)

    def _odict_of_tensors(self, keys, node):
        return self._fill_tensors(collections.OrderedDict(), node)

    def _dict_of_tensors(self, keys, node):
        return self._fill_tensors({}, node)

    def _fill_tensors(self, mapping, node):
        """A dict_of_tensors node: keys[i] -> the tensor with id first_id + i."""
        keys, first, _ = tensor_dict_entries(node)
        ids = range(first, first + len(keys))
        stored = list(map(self._image.tensor_ids.get, ids))
        if None not in stored and self._by_id.keys().isdisjoint(ids) and \
                self._used.isdisjoint(stored) and len(set(stored)) == len(stored):
            # Every entry is a tensor object of its own over bytes no other
            # object holds yet, with no flags: the stored array itself (what
            # builder.tensor returns for it), without a Python call per entry.
            values = list(map(self._stored.__getitem__, stored))
            self._used.update(stored)
            self._by_id.update(zip(ids, values))
            mapping.update(zip(keys, values))
        else:
            for key, ident in zip(keys, ids):
                value = self._tensor_by_id(ident, None)
                if value is not _UNSELECTED:
                    mapping[key] = value
        return self._fill(mapping, [], node)  # the attrs

    def _counter(self, pairs, node):
        return self._fill(collections.Counter(), pairs, node)

    def _defaultdict(self, pairs, node):
        factory = node.get("factory")
        if factory is not None and factory not in _DEFAULT_FACTORIES:
            _fail(f"defaultdict factory {factory!r} is not one the policy allows")
        return self._fill(collections.defaultdict(_DEFAULT_FACTORIES.get(factory)), pairs, node)

    def _tuple(self, items, node):
        return tuple(self._items(items))

    def _size(self, items, node):
        return self._builder.size(self._items(items))

    def _set(self, items, node):
        return self._hashable(set, items)

    def _frozenset(self, items, node):
        return self._hashable(frozenset, items)

    def _hashable(self, kind, items):
        try:
            return kind(self._items(items))
        except TypeError:
            _fail(f"{kind.__name__} of unhashable values")

    # ------------------------------------------------------------ scalars

    def _big_int(self, text, node):
        try:
            raw = bytes.fromhex(text)
        except (TypeError, ValueError):
            _fail(f"int node {text!r} is not hex")
        if not raw:
            _fail("int node with no bytes")
        return int.from_bytes(raw, "little", signed=True)

    def _float(self, text, node):
        if not isinstance(text, str) or text not in _FLOATS:
            _fail(f"float node {text!r} is not nan, inf or -inf")
        return _FLOATS[text]

    def _complex(self, parts, node):
        if not (isinstance(parts, list) and len(parts) == 2):
            _fail("complex node is not [re, im]")
        real, imag = (self.value(p) for p in parts)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (real, imag)):
            _fail("complex node parts are not numbers")
        return complex(real, imag)

    def _decode(self, text):
        try:
            return base64.b64decode(text, validate=True)
        except (TypeError, ValueError):
            _fail("bytes node is not base64")

    def _bytes(self, text, node):
        return self._decode(text)

    def _bytearray(self, text, node):
        return bytearray(self._decode(text))

    def _dtype(self, name, node):
        if not isinstance(name, str):
            _fail("dtype node does not hold a name")
        return self._builder.dtype(name)

    def _device(self, spec, node):
        if not isinstance(spec, str):
            _fail("device node does not hold a string")
        return self._builder.device(spec)

    def _global(self, name, node):
        if not isinstance(name, str):
            _fail("global node does not hold a name")
        return Global(name)

    # ------------------------------------------------------------ tensors and records

    def _tensor(self, name, node):
        return self._tensor_by_id(node["id"], node)  # checked by parse_image

    def _tensor_by_id(self, ident, node):
        """The object for tensor id `ident`; `node` holds its flags (None: it has none)."""
        if ident in self._by_id:
            return self._by_id[ident]
        stored = self._image.tensor_ids.get(ident)
        if stored is None:
            return _UNSELECTED  # parse_image allowed it only because of `select`
        shared = stored in self._used
        self._used.add(stored)
        value = self._builder.tensor(self._stored[stored], node, shared)
        self._by_id[ident] = value
        return value

    def _tensor_kind(self, node, make):
        """A sparse/quantized/meta node (tensor_kinds.py), one object per id like tensors."""
        ident = node.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int):
            _fail("tensor node without an int id")
        if ident not in self._by_id:
            def part(key):
                data = node.get(key)
                if not isinstance(data, dict) or "tensor" not in data:
                    _fail(f"tensor node's {key} is not a tensor node")
                value = self._tensor(data["tensor"], data)
                if value is _UNSELECTED:
                    raise _LeftOut
                return value

            try:
                self._by_id[ident] = make(part)
            except _LeftOut:  # `select` left out its data: the tensor is left out too
                self._by_id[ident] = _UNSELECTED
        return self._by_id[ident]

    def _sparse(self, layout, node):
        return self._tensor_kind(
            node, lambda part: tensor_kinds.sparse(part, self._builder, layout, node))

    def _quantized(self, qtype, node):
        return self._tensor_kind(
            node, lambda part: tensor_kinds.quantized(part, self._builder, qtype, node))

    def _meta_tensor(self, dtype, node):
        return self._tensor_kind(node, lambda part: tensor_kinds.meta(self._builder, dtype, node))

    def _record(self, cls, node):
        if not isinstance(cls, str):
            _fail("object node does not name its class")
        if _namespace_node(cls, node):
            return self._fill_namespace(argparse.Namespace(), node)
        return self._fill_record(Record(cls), node)

    def _fill_namespace(self, namespace, node):
        state = self.value(node.get("state"))
        if state is not None and not (isinstance(state, dict) and
                                      all(isinstance(k, str) for k in state)):
            _fail("an argparse.Namespace state is not a dict of attribute names")
        vars(namespace).update(state or {})
        return namespace

    def _fill_record(self, record, node):
        args = self.value(node.get("args"))
        record.args = () if args is None else args
        if not isinstance(record.args, tuple):
            _fail(f"{record.name} record's args are not a tuple")
        if "kwargs" in node:
            kwargs = self.value(node["kwargs"])
            if not isinstance(kwargs, dict):
                _fail(f"{record.name} record's kwargs are not a dict")
            record.kwargs = kwargs
        record.state = self.value(node.get("state"))
        if "dictitems" in node:
            for key, value in self._pairs(node["dictitems"]):
                record.dictitems[key] = value
        if "listitems" in node:
            record.listitems.extend(self._items(node["listitems"]))
        return record

    def _method(self, name, node):
        if not isinstance(name, str):
            _fail("method node does not name its attribute")
        return Method(name, self.value(node.get("self")))

    # ------------------------------------------------------------ shared objects

    def _shared(self, ident, node):
        """{"shared": K, "value": node}: made once; mutable ones exist before their contents."""
        if type(ident) is not int or ident != len(self._shared_objects):
            _fail(f"shared object {ident!r} out of order")
        inner = node.get("value")
        self._shared_objects.append(_BEING_BUILT)
        shell = self._shell(inner)
        if shell is None:  # immutable: complete before anything can refer to it
            value = self.node(inner)
            self._shared_objects[ident] = value
            return value
        obj, fill = shell
        self._shared_objects[ident] = obj
        fill(obj)
        return obj

    def _ref(self, ident, node):
        if type(ident) is not int or not 0 <= ident < len(self._shared_objects):
            _fail(f"reference to unknown shared object {ident!r}")
        value = self._shared_objects[ident]
        if value is _BEING_BUILT:
            _fail("an immutable object (tuple, frozenset) contains itself")
        return value

    def _shell(self, inner):
        """(empty object, function filling it) for a mutable node; None otherwise."""
        if type(inner) is list:
            return [], lambda obj: obj.extend(self._items(inner))
        if type(inner) is not dict:
            return None
        if "object" in inner and isinstance(inner["object"], str):
            if _namespace_node(inner["object"], inner):
                return argparse.Namespace(), lambda obj: self._fill_namespace(obj, inner)
            return Record(inner["object"]), lambda obj: self._fill_record(obj, inner)
        if "method" in inner and isinstance(inner["method"], str):
            # A scheduler's bound method whose owner holds it: the owner refers back.
            return (Method(inner["method"], None),
                    lambda obj: setattr(obj, "obj", self.value(inner.get("self"))))
        for tag, make in _MAPPING_SHELLS:
            if tag in inner:
                if tag == "defaultdict":
                    factory = inner.get("factory")
                    if factory is not None and factory not in _DEFAULT_FACTORIES:
                        _fail(f"defaultdict factory {factory!r} is not one the policy allows")
                    return (collections.defaultdict(_DEFAULT_FACTORIES.get(factory)),
                            lambda obj: self._fill(obj, inner[tag], inner))
                if tag.endswith("_of_tensors"):
                    return make(), lambda obj: self._fill_tensors(obj, inner)
                return make(), lambda obj: self._fill(obj, inner[tag], inner)
        if "set" in inner:
            def fill_set(obj):
                try:
                    obj.update(self._items(inner["set"]))
                except TypeError:
                    _fail("set of unhashable values")
            return set(), fill_set
        return None


def _namespace_node(cls, node):
    """An argparse.Namespace made with no arguments: rebuilt as a real Namespace."""
    args = node.get("args")
    no_args = args is None or args == {"tuple": []}
    return cls == "argparse.Namespace" and no_args and not any(
        key in node for key in ("kwargs", "dictitems", "listitems"))


_BEING_BUILT = object()

# Mapping nodes whose object can exist before its entries (for cycles).
_MAPPING_SHELLS = (
    ("odict_of_tensors", collections.OrderedDict), ("dict_of_tensors", dict),
    ("odict", collections.OrderedDict), ("dict", dict), ("counter", collections.Counter),
    ("defaultdict", None),
)


# Node tags and their handlers, tried in this order. A class-level table of
# plain functions: bound methods stored on the instance would tie it into a
# reference cycle, which only the cyclic GC (paused while loading) could free,
# keeping the whole image alive until it ran.
_TAGS = (
    ("tensor", _Rebuilder._tensor), ("ref", _Rebuilder._ref), ("shared", _Rebuilder._shared),
    ("method", _Rebuilder._method), ("sparse", _Rebuilder._sparse),
    ("quantized", _Rebuilder._quantized), ("meta_tensor", _Rebuilder._meta_tensor),
    ("odict_of_tensors", _Rebuilder._odict_of_tensors),
    ("dict_of_tensors", _Rebuilder._dict_of_tensors), ("object", _Rebuilder._record),
    ("odict", _Rebuilder._odict), ("dict", _Rebuilder._dict),
    ("defaultdict", _Rebuilder._defaultdict), ("counter", _Rebuilder._counter),
    ("tuple", _Rebuilder._tuple), ("size", _Rebuilder._size), ("set", _Rebuilder._set),
    ("frozenset", _Rebuilder._frozenset), ("int", _Rebuilder._big_int),
    ("float", _Rebuilder._float), ("complex", _Rebuilder._complex),
    ("bytes", _Rebuilder._bytes), ("bytearray", _Rebuilder._bytearray),
    ("dtype", _Rebuilder._dtype), ("device", _Rebuilder._device), ("global", _Rebuilder._global),
)
