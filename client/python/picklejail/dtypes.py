"""The safetensors dtypes picklejail writes, and what each becomes in torch and numpy.

One table so the image checker, the torch builder and the numpy builder agree.
numpy has no bfloat16 or float8 types: those tensors come back as raw
little-endian uint16 / uint8 arrays holding the exact bits (the `raw` flag).
"""

from dataclasses import dataclass


# eq=False: each dtype is one object, compared by identity in C; the generated
# __eq__ was a Python call per tensor wherever a column was searched or grouped.
@dataclass(frozen=True, eq=False)
class DType:
    name: str        # safetensors name, e.g. "F32"
    size: int        # bytes per element
    torch_name: str  # attribute of the torch module, e.g. "float32"
    numpy: str       # numpy dtype string (explicit little-endian where it matters)
    raw: bool = False  # numpy gets the bits, not the values (no such numpy type)


DTYPES = {d.name: d for d in (
    DType("BOOL", 1, "bool", "|b1"),
    DType("U8", 1, "uint8", "|u1"),
    DType("I8", 1, "int8", "|i1"),
    DType("I16", 2, "int16", "<i2"),
    DType("U16", 2, "uint16", "<u2"),
    DType("I32", 4, "int32", "<i4"),
    DType("U32", 4, "uint32", "<u4"),
    DType("I64", 8, "int64", "<i8"),
    DType("U64", 8, "uint64", "<u8"),
    DType("F16", 2, "float16", "<f2"),
    DType("BF16", 2, "bfloat16", "<u2", raw=True),
    DType("F32", 4, "float32", "<f4"),
    DType("F64", 8, "float64", "<f8"),
    DType("C64", 8, "complex64", "<c8"),
    DType("F8_E4M3", 1, "float8_e4m3fn", "|u1", raw=True),
    DType("F8_E5M2", 1, "float8_e5m2", "|u1", raw=True),
    DType("F8_E4M3FNUZ", 1, "float8_e4m3fnuz", "|u1", raw=True),
    DType("F8_E5M2FNUZ", 1, "float8_e5m2fnuz", "|u1", raw=True),
)}

# complex128 has no safetensors dtype: it is stored as F64 with a trailing
# dimension of 2 and listed in __metadata__["picklejail.complex128"].
COMPLEX128 = DType("F64", 16, "complex128", "<c16")

# torch dtype name (as the object description spells it) -> stored safetensors name.
STORED_AS = {d.torch_name: d.name for d in DTYPES.values()}
STORED_AS[COMPLEX128.torch_name] = "F64"
