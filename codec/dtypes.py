"""Safetensors dtype names and how they map to numpy storage, torch dtypes and bit fields.

numpy has no bfloat16 or float8, so those are stored as unsigned integers of the same
width ("storage dtype"); the logical dtype travels as its safetensors name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str            # safetensors spelling, e.g. "BF16"
    itemsize: int        # bytes per element
    storage: str         # numpy dtype string used to hold the bits
    kind: str            # "float", "int", "uint", "bool"
    exponent_bits: int = 0
    mantissa_bits: int = 0

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.storage)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


_TABLE = [
    DType("BOOL", 1, "bool", "bool"),
    DType("U8", 1, "<u1", "uint"),
    DType("I8", 1, "<i1", "int"),
    DType("U16", 2, "<u2", "uint"),
    DType("I16", 2, "<i2", "int"),
    DType("U32", 4, "<u4", "uint"),
    DType("I32", 4, "<i4", "int"),
    DType("U64", 8, "<u8", "uint"),
    DType("I64", 8, "<i8", "int"),
    DType("F16", 2, "<f2", "float", 5, 10),
    DType("BF16", 2, "<u2", "float", 8, 7),
    DType("F32", 4, "<f4", "float", 8, 23),
    DType("F64", 8, "<f8", "float", 11, 52),
    DType("F8_E4M3", 1, "<u1", "float", 4, 3),
    DType("F8_E5M2", 1, "<u1", "float", 5, 2),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}

# Unknown dtype names still round-trip: as opaque bytes, one byte per "element".
OPAQUE = DType("OPAQUE", 1, "<u1", "uint")

_NUMPY_TO_NAME = {
    np.dtype("bool"): "BOOL", np.dtype("<u1"): "U8", np.dtype("<i1"): "I8",
    np.dtype("<u2"): "U16", np.dtype("<i2"): "I16", np.dtype("<u4"): "U32",
    np.dtype("<i4"): "I32", np.dtype("<u8"): "U64", np.dtype("<i8"): "I64",
    np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<f8"): "F64",
}

_TORCH_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def lookup(name: str) -> DType:
    """The DType for a safetensors name; unknown names map to OPAQUE."""
    return DTYPES.get(name, OPAQUE)


def from_numpy(dtype: np.dtype) -> str:
    """Safetensors name of a numpy dtype (big-endian input is not accepted)."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise TypeError(f"big-endian dtype {dt} is not supported; convert to little-endian")
    name = _NUMPY_TO_NAME.get(dt.newbyteorder("<") if dt.byteorder == "=" else dt)
    if name is None:
        raise TypeError(f"numpy dtype {dt} has no safetensors equivalent")
    return name


def torch_dtype(name: str):
    """The torch dtype for a safetensors name (imports torch)."""
    import torch

    attr = _TORCH_NAMES.get(name)
    if attr is None or not hasattr(torch, attr):
        raise TypeError(f"dtype {name} has no torch equivalent")
    return getattr(torch, attr)


def from_torch(tdtype) -> str:
    """Safetensors name of a torch dtype."""
    s = str(tdtype).removeprefix("torch.")
    for k, v in _TORCH_NAMES.items():
        if v == s:
            return k
    raise TypeError(f"torch dtype {tdtype} has no safetensors equivalent")
