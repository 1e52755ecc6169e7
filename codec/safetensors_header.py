"""Parse and validate a safetensors header without trusting it.

A safetensors file is: u64 little-endian N, N bytes of JSON header, then the data buffer.
The header maps tensor names to {dtype, shape, data_offsets=[begin, end]} relative to the
buffer, plus an optional "__metadata__" of string to string. Like the reference
implementation we require the buffer to be entirely indexed: no holes, no overlaps, no
trailing bytes. Every violation raises FormatError naming the tensor and the byte offset.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .dtypes import lookup
from .errors import FormatError, TruncatedError

MAX_HEADER = 100 << 20   # the reference implementation's limit: 100 MB of JSON
MAX_DIMS = 64


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    begin: int      # offset in the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    header_len: int                 # N
    tensors: list[TensorEntry]      # in data-buffer order
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"safetensors header: duplicate key {k!r}")
        out[k] = v
    return out


def looks_like_safetensors(prefix: bytes, file_size: int) -> bool:
    """Cheap sniff: a plausible length followed by '{'."""
    if len(prefix) < 9:
        return False
    n = int.from_bytes(prefix[:8], "little")
    return 2 <= n <= min(MAX_HEADER, file_size - 8) and prefix[8:9] == b"{"


def parse_header(head: bytes, file_size: int) -> SafetensorsHeader:
    """Validate `head` (the first 8+N bytes of a file of `file_size` bytes)."""
    if file_size < 8 or len(head) < 8:
        raise TruncatedError(f"safetensors: file of {file_size} bytes has no 8-byte header length")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER:
        raise FormatError(f"safetensors: header length {n} exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > file_size or len(head) < 8 + n:
        raise TruncatedError(f"safetensors: header length {n} runs past the end of the "
                             f"{file_size}-byte file")
    try:
        text = bytes(head[8:8 + n]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"safetensors: header is not UTF-8 (byte {8 + exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise FormatError(f"safetensors: header is not valid JSON: {exc.msg} at byte {8 + exc.pos}") from None
    if not isinstance(obj, dict):
        raise FormatError("safetensors: header is not a JSON object")
    metadata = obj.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise FormatError("safetensors: __metadata__ must map strings to strings")
    buffer_len = file_size - 8 - n
    tensors = []
    for name, info in obj.items():
        tensors.append(_entry(name, info, buffer_len))
    tensors.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in tensors:
        if t.begin != pos:
            what = "overlaps the previous tensor" if t.begin < pos else f"leaves a hole of {t.begin - pos} bytes"
            raise FormatError(f"safetensors: tensor {t.name!r} at data offset {t.begin} {what}")
        pos = t.end
    if pos != buffer_len:
        raise FormatError(f"safetensors: tensors cover {pos} data bytes but the file holds {buffer_len} "
                          f"after the header")
    return SafetensorsHeader(n, tensors, metadata)


def _entry(name: str, info, buffer_len: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise FormatError(f"safetensors: entry for tensor {name!r} is not an object")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not dtype:
        raise FormatError(f"safetensors: tensor {name!r} has no dtype string")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise FormatError(f"safetensors: tensor {name!r} has an invalid shape {shape!r:.100}")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
        raise FormatError(f"safetensors: tensor {name!r} has invalid data_offsets {offs!r:.100}")
    begin, end = offs
    if not 0 <= begin <= end <= buffer_len:
        raise FormatError(f"safetensors: tensor {name!r} data_offsets [{begin}, {end}] outside the "
                          f"{buffer_len}-byte data buffer")
    dt = lookup(dtype)
    count = math.prod(shape)
    if dt.name != "OPAQUE" and count * dt.itemsize != end - begin:
        raise FormatError(f"safetensors: tensor {name!r} is {dtype}{shape} = {count * dt.itemsize} bytes "
                          f"but data_offsets span {end - begin}")
    return TensorEntry(name, dtype, list(shape), begin, end)
