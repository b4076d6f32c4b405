"""Sparse, quantized and meta tensors, rebuilt from their description nodes.

The worker writes their data as ordinary stored tensors (a sparse tensor's
`name.indices` and `name.values`, a quantized tensor's `name.int_repr`, ...)
and a node saying how they fit together (docs/output-format.md). The torch
backend rebuilds what torch.load returns (layout, coalesced flag, qscheme,
scales, meta shape and strides); the numpy backend, which has none of these
kinds, gives the named tuples below holding numpy arrays.
"""

import collections

from .errors import Malformed, Unsupported

SparseTensor = collections.namedtuple(
    "SparseTensor", "layout size indices values compressed_indices plain_indices coalesced")
SparseTensor.__doc__ = """A sparse tensor (backend='numpy'): `layout` is "sparse_coo", "sparse_csr",
"sparse_csc", "sparse_bsr" or "sparse_bsc"; COO fills `indices` ([sparse_dim, nnz]) and
`values`, the compressed layouts `compressed_indices`, `plain_indices` and `values`; the
others are None. `coalesced` is True/False where the file said (torch >= 2.1), else None."""

QuantizedTensor = collections.namedtuple(
    "QuantizedTensor", "qtype qscheme int_repr scale zero_point scales zero_points axis")
QuantizedTensor.__doc__ = """A quantized tensor (backend='numpy'): `qtype` "qint8", "quint8" or
"qint32"; `int_repr` its integers; per_tensor_affine fills `scale` and `zero_point`,
per_channel_affine `scales`, `zero_points` (arrays) and `axis`. The real values are
(int_repr - zero_point) * scale, along `axis` for per-channel tensors."""

MetaTensor = collections.namedtuple("MetaTensor", "dtype size stride")
MetaTensor.__doc__ = """A tensor on the meta device (backend='numpy'): no data, only its dtype
name, size and stride."""

_LAYOUTS = ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")
_COMPRESSED_PARTS = ("compressed_indices", "plain_indices", "values")
_QTYPES = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}


def _fail(message):
    raise Malformed("malformed", message)


def _dims(node, key):
    dims = node.get(key)
    if not isinstance(dims, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        _fail(f"{key} of a tensor node is not a list of non-negative ints")
    return tuple(dims)


def _flag(node, key):
    value = node.get(key, False)
    if not isinstance(value, bool):
        _fail(f"{key} of a tensor node is not a boolean")
    return value


def sparse(part, builder, layout, node):
    """A sparse tensor; `part(key)` rebuilds the data tensor node under `key`."""
    if layout not in _LAYOUTS:
        _fail(f"unknown sparse layout {layout!r}")
    size = _dims(node, "shape")
    coalesced = node.get("coalesced")
    if coalesced is not None and not isinstance(coalesced, bool):
        _fail("coalesced is not a boolean")
    keys = ("indices", "values") if layout == "sparse_coo" else _COMPRESSED_PARTS
    data = {key: part(key) for key in keys}
    if builder.name == "numpy":
        return SparseTensor(layout, size, data.get("indices"), data["values"],
                            data.get("compressed_indices"), data.get("plain_indices"), coalesced)
    torch = builder.torch
    try:
        if layout == "sparse_coo":
            tensor = torch.sparse_coo_tensor(data["indices"], data["values"], size)
            if coalesced:
                tensor = tensor._coalesced_(True)
        else:
            tensor = torch.sparse_compressed_tensor(
                data["compressed_indices"], data["plain_indices"], data["values"], size,
                layout=getattr(torch, layout))
    except (RuntimeError, ValueError, TypeError) as error:
        _fail(f"sparse tensor does not fit together: {error}")
    return _flags(builder, tensor, node)


def quantized(part, builder, qtype, node):
    """A quantized tensor from its integers and quantizer."""
    if qtype not in _QTYPES:
        _fail(f"unknown quantized type {qtype!r}")
    scheme = node.get("qscheme")
    int_repr = part("int_repr")
    if scheme == "per_tensor_affine":
        scale, zero_point = node.get("scale"), node.get("zero_point")
        if not isinstance(scale, (int, float)) or isinstance(zero_point, bool) or \
                not isinstance(zero_point, int):
            _fail("per_tensor_affine node without a numeric scale and int zero_point")
        if builder.name == "numpy":
            return QuantizedTensor(qtype, scheme, int_repr, float(scale), zero_point,
                                   None, None, None)
        make = builder.torch._make_per_tensor_quantized_tensor
        args = (int_repr, float(scale), zero_point)
    elif scheme == "per_channel_affine":
        axis = node.get("axis")
        if isinstance(axis, bool) or not isinstance(axis, int):
            _fail("per_channel_affine node without an int axis")
        scales, zero_points = part("scales"), part("zero_points")
        if builder.name == "numpy":
            return QuantizedTensor(qtype, scheme, int_repr, None, None, scales, zero_points, axis)
        make = builder.torch._make_per_channel_quantized_tensor
        args = (int_repr, scales, zero_points, axis)
    else:
        _fail(f"unknown qscheme {scheme!r}")
    if str(int_repr.dtype) != "torch." + _QTYPES[qtype]:
        _fail(f"{qtype} tensor over {int_repr.dtype} integers")
    try:
        tensor = make(*args)
    except RuntimeError as error:
        _fail(f"quantized tensor does not fit together: {error}")
    return _flags(builder, tensor, node)


def meta(builder, dtype, node):
    """A meta tensor: shape, strides and dtype, no data."""
    size, stride = _dims(node, "shape"), _dims(node, "stride")
    if len(size) != len(stride):
        _fail("meta tensor size and stride differ in length")
    if builder.name == "numpy":
        return MetaTensor(dtype, size, stride)
    tensor = builder.torch.empty_strided(size, stride, dtype=builder.dtype(dtype), device="meta")
    return _flags(builder, tensor, node)


def _flags(builder, tensor, node):
    requires_grad = _flag(node, "requires_grad")
    try:
        if _flag(node, "parameter"):
            return builder.torch.nn.Parameter(tensor, requires_grad=requires_grad)
        if requires_grad:
            tensor.requires_grad_(True)
    except RuntimeError as error:
        raise Unsupported("unsupported", f"torch refused the tensor's flags: {error}") from None
    return tensor
