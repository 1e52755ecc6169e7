"""A small GGUF reader for compression: header, key/value section and tensor infos, hostile-input safe.

Only what `codec` needs: where the header ends, where the data section begins, and each tensor's
name, ggml type, dims and byte range. Every count, length and offset is checked against the file
size before it is used (no allocation or read is driven by an unchecked field), nesting is bounded,
and anything wrong raises `GGUFError` (a `FormatError`) naming the field and its byte offset.

Tensors of types this module does not know the size of are not an error: the run from their offset
to the next tensor's offset (or the end of the file) is kept as opaque bytes.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from .errors import FormatError

MAGIC = b"GGUF"


class GGUFError(FormatError):
    """A malformed GGUF file."""


# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}
PLAIN = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}   # same names as safetensors

# value type id -> struct format of a scalar (8 string, 9 array handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_DIMS = 4
MAX_DEPTH = 4


@dataclass
class GGUFTensor:
    name: str
    type_id: int
    type_name: str | None     # None: unknown type (kept opaque)
    dims: list[int]           # ggml order: dims[0] is the fastest-varying
    offset: int               # absolute byte offset in the file
    nbytes: int | None        # None for unknown types

    @property
    def shape(self) -> list[int]:
        """Row-major shape (safetensors/torch order)."""
        return list(reversed(self.dims))


@dataclass
class GGUFInfo:
    version: int
    alignment: int
    data_start: int           # first byte of the data section (the header is [0, data_start))
    tensors: list[GGUFTensor]  # in file order of their data
    metadata: dict[str, object]  # scalar and string values only (arrays are skipped)


class _Reader:
    def __init__(self, buf, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"GGUF {what} at byte {self.pos} needs {n} bytes, the file has "
                            f"{self.size - self.pos} left (count or length past the end)")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str, max_len: int = 1 << 30) -> str:
        n = self.unpack("<Q", what + " length")
        if n > max_len:
            raise GGUFError(f"GGUF {what} at byte {self.pos - 8}: length {n} exceeds {max_len}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"GGUF {what} at byte {self.pos - n} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == 8:
            return self.string(what)
        if vtype == 9:
            if depth >= MAX_DEPTH:
                raise GGUFError(f"GGUF {what} at byte {self.pos}: arrays nested deeper than {MAX_DEPTH}")
            at = self.pos
            etype = self.unpack("<I", what + " array type")
            count = self.unpack("<Q", what + " array count")
            if etype in _SCALARS:
                nbytes = count * struct.calcsize(_SCALARS[etype])
                self.need(nbytes, f"{what} array of {count}")
                self.pos += nbytes
                return None
            if etype not in (8, 9):
                raise GGUFError(f"GGUF {what} at byte {at}: unknown array element type {etype}")
            # every element takes at least 8 bytes (a length or a nested header)
            self.need(min(count, self.size) * 8 if count <= self.size else self.size + 1,
                      f"{what} array of {count}")
            for _ in range(count):
                self.value(etype, what + " element", depth + 1)
            return None
        raise GGUFError(f"GGUF {what} at byte {self.pos - 4}: unknown value type {vtype}")


def parse(buf, size: int | None = None) -> GGUFInfo:
    """Parse a GGUF file held in `buf` (bytes, memoryview or mmap) of `size` bytes."""
    size = len(buf) if size is None else size
    r = _Reader(buf, size)
    r.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != MAGIC:
        raise GGUFError(f"not a GGUF file: magic {magic!r} at byte 0, expected {MAGIC!r}")
    r.pos = 4
    version = r.unpack("<I", "version")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} at byte 4 is not supported (2 and 3 are)")
    n_tensors = r.unpack("<Q", "tensor count")
    n_kv = r.unpack("<Q", "key/value count")
    # each key/value takes >= 12 bytes, each tensor info >= 28: reject counts the file cannot hold
    if n_kv * 12 > size - r.pos:
        raise GGUFError(f"GGUF key/value count {n_kv} at byte 16 is more than the file can hold")
    if n_tensors * 28 > size - r.pos:
        raise GGUFError(f"GGUF tensor count {n_tensors} at byte 8 is more than the file can hold")
    alignment = 32
    metadata: dict[str, object] = {}
    for i in range(n_kv):
        key = r.string(f"key {i}", 1 << 16)
        vtype = r.unpack("<I", f"type of key {key!r}")
        v = r.value(vtype, f"value of key {key!r}")
        if v is not None:
            metadata[key] = v
        if key == "general.alignment":
            if vtype != 4 or not isinstance(v, int) or v <= 0 or v & (v - 1) or v > 1 << 20:
                raise GGUFError(f"GGUF general.alignment must be a power-of-two u32, got {v!r}")
            alignment = v
    infos = []
    for i in range(n_tensors):
        name = r.string(f"tensor {i} name", 1 << 16)
        nd = r.unpack("<I", f"tensor {name!r} dimension count")
        if nd > MAX_DIMS:
            raise GGUFError(f"GGUF tensor {name!r}: {nd} dimensions (at most {MAX_DIMS})")
        dims = [r.unpack("<Q", f"tensor {name!r} dimension {d}") for d in range(nd)]
        tid = r.unpack("<I", f"tensor {name!r} type")
        off = r.unpack("<Q", f"tensor {name!r} offset")
        infos.append((name, dims, tid, off))
    data_start = -(-r.pos // alignment) * alignment
    if data_start > size:
        raise GGUFError(f"GGUF data section would start at byte {data_start}, past the end ({size})")
    tensors, names = [], set()
    for name, dims, tid, off in infos:
        if name in names:
            raise GGUFError(f"GGUF tensor name {name!r} appears twice")
        names.add(name)
        if off > size - data_start:
            raise GGUFError(f"GGUF tensor {name!r}: offset {off} lies past the end of the file "
                            f"(data section is {size - data_start} bytes)")
        n = math.prod(dims) if dims else 1
        known = GGML_TYPES.get(tid)
        nbytes = None
        if known is not None:
            tname, be, bb = known
            if not dims or dims[0] % be:
                raise GGUFError(f"GGUF tensor {name!r} ({tname}): first dimension {dims[:1]} is not a "
                                f"multiple of the block size {be}")
            nbytes = n // be * bb
            if data_start + off + nbytes > size:
                raise GGUFError(f"GGUF tensor {name!r} ({tname}, {nbytes} bytes at offset {off}) runs "
                                f"past the end of the file ({size} bytes)")
        tensors.append(GGUFTensor(name, tid, known[0] if known else None, dims, data_start + off, nbytes))
    tensors.sort(key=lambda t: t.offset)
    for a, b in zip(tensors, tensors[1:]):
        if a.nbytes is not None and a.offset + a.nbytes > b.offset:
            raise GGUFError(f"GGUF tensors {a.name!r} and {b.name!r} overlap "
                            f"([{a.offset}, {a.offset + a.nbytes}) and offset {b.offset})")
        if a.offset == b.offset and a.nbytes != 0:
            raise GGUFError(f"GGUF tensors {a.name!r} and {b.name!r} start at the same offset {a.offset}")
    return GGUFInfo(version, alignment, data_start, tensors, metadata)


def layout(info: GGUFInfo, size: int) -> list[tuple[str, int, int, GGUFTensor | None]]:
    """The file as consecutive pieces (role, start, length, tensor): header, tensors, gaps.

    role is "header" (the bytes before the data section), "tensor" (a tensor of known type),
    or "bytes" (alignment padding, trailing bytes, and tensors of unknown type, kept opaque).
    """
    pieces: list[tuple[str, int, int, GGUFTensor | None]] = [("header", 0, info.data_start, None)]
    pos = info.data_start
    ts = info.tensors
    for i, t in enumerate(ts):
        if t.offset > pos:
            pieces.append(("bytes", pos, t.offset - pos, None))
            pos = t.offset
        if t.nbytes is None:   # unknown type: opaque up to the next tensor or the end
            end = ts[i + 1].offset if i + 1 < len(ts) else size
            if end > pos:
                pieces.append(("bytes", pos, end - pos, None))
            pos = max(pos, end)
        else:
            pieces.append(("tensor", t.offset, t.nbytes, t))
            pos = t.offset + t.nbytes
    if pos < size:
        pieces.append(("bytes", pos, size - pos, None))
    return pieces


def looks_like_gguf(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC
