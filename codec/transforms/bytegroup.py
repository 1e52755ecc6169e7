"""`bytegroup`: ZipNN-style byte grouping for F16, BF16, F32, F64 and integer tensors.

Each element (itemsize s bytes, little-endian) is rotated left by `rotate` bits within its
8*s-bit word (for BF16/F32/F64, rotate=1 moves the sign to bit 0 so the exponent fills the top
byte), then split into s byte planes: plane p holds byte p of every rotated element. Each plane of
each chunk is stored with the best of three methods:

    0 raw       the n plane bytes
    1 huffman   `huffman.encode_block`: u32 LE bit count | 32-byte bitmap of used byte values |
                4-bit code lengths of the used values (high nibble first, max length 15) |
                MSB-first canonical Huffman bitstream (exactly ceil(bits/8) bytes)
    2 zstd      one Zstandard frame (no content size, no checksum)

Chunk payload (n = decoded bytes // s, t = decoded bytes % s trailing bytes):
    s entries of 5 bytes: u8 method, u32 LE payload length   (plane 0 first)
    the s plane payloads, in plane order
    the t trailing bytes, raw
The payload is exactly that long; anything else is a FormatError.
"""
from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from ..abc import Codec
from ..dtypes import lookup
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat, byte_entropy_bits
from ..entropy import huffman
from ..entropy.zstd import compress_bytes, decompress_into

RAW, HUFFMAN, ZSTD = 0, 1, 2
_METHOD_NAMES = {RAW: "raw", HUFFMAN: "huffman", ZSTD: "zstd"}
DEFAULT_CHUNK = 1 << 18


@nb.njit(nogil=True, cache=True)
def _split(src, s, rot, planes):
    n = planes.shape[1]
    bits = 8 * s
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if bits == 64 else (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    if s == 2 and rot == 1:
        for i in range(n):
            v = np.uint32(src[2 * i]) | (np.uint32(src[2 * i + 1]) << np.uint32(8))
            v = ((v << np.uint32(1)) | (v >> np.uint32(15))) & np.uint32(0xFFFF)
            planes[0, i] = np.uint8(v & np.uint32(255))
            planes[1, i] = np.uint8(v >> np.uint32(8))
        return
    for i in range(n):
        v = np.uint64(0)
        for b in range(s):
            v |= np.uint64(src[s * i + b]) << np.uint64(8 * b)
        if rot:
            v = ((v << np.uint64(rot)) | (v >> np.uint64(bits - rot))) & mask
        for b in range(s):
            planes[b, i] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(255))


@nb.njit(nogil=True, cache=True)
def _merge(planes, s, rot, out):
    n = planes.shape[1]
    bits = 8 * s
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if bits == 64 else (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    if s == 2 and rot == 1:
        for i in range(n):
            v = np.uint32(planes[0, i]) | (np.uint32(planes[1, i]) << np.uint32(8))
            v = ((v >> np.uint32(1)) | (v << np.uint32(15))) & np.uint32(0xFFFF)
            out[2 * i] = np.uint8(v & np.uint32(255))
            out[2 * i + 1] = np.uint8(v >> np.uint32(8))
        return
    for i in range(n):
        v = np.uint64(0)
        for b in range(s):
            v |= np.uint64(planes[b, i]) << np.uint64(8 * b)
        if rot:
            v = ((v >> np.uint64(rot)) | (v << np.uint64(bits - rot))) & mask
        for b in range(s):
            out[s * i + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(255))


@nb.njit(nogil=True, cache=True)
def _plane_counts(planes, counts):
    for p in range(planes.shape[0]):
        for i in range(planes.shape[1]):
            counts[p, planes[p, i]] += 1


def _default_rotate(dtype: str) -> int:
    d = lookup(dtype)
    if d.name in ("BF16", "F32", "F64"):
        return 1
    return 0


@register_codec
class ByteGroup(Codec):
    codec_id = "bytegroup"
    description = "byte planes (exponent rotated into one byte) with per-plane Huffman/zstd/raw (ZipNN layout)"
    max_expansion = 1.01

    def __init__(self, itemsize: int = 1, rotate: int = 0, zstd_level: int = 3, zstd: str = "auto"):
        if itemsize not in (1, 2, 4, 8):
            raise ValueError(f"itemsize must be 1, 2, 4 or 8, got {itemsize!r}")
        if not isinstance(rotate, int) or not 0 <= rotate < 8 * itemsize:
            raise ValueError(f"rotate must be in [0, {8 * itemsize}), got {rotate!r}")
        if not isinstance(zstd_level, int) or not -7 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [-7, 22], got {zstd_level!r}")
        if zstd not in ("auto", "always", "never"):
            raise ValueError(f"zstd must be 'auto', 'always' or 'never', got {zstd!r}")
        self.itemsize, self.rotate, self.zstd_level, self.zstd = itemsize, rotate, zstd_level, zstd

    def fit(self, source, dtype: str) -> "ByteGroup":
        d = lookup(dtype)
        zmode = self.zstd
        if zmode == "auto":
            zmode = "never" if d.is_float else "always"
        return ByteGroup(d.itemsize, _default_rotate(dtype) if d.itemsize > 1 else 0, self.zstd_level, zmode)

    def chunk_alignment(self) -> int:
        return self.itemsize

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "itemsize": self.itemsize, "rotate": self.rotate,
                "zstd_level": self.zstd_level, "zstd": self.zstd}

    @classmethod
    def from_config(cls, config):
        params = {k: v for k, v in config.items() if k != "id"}
        unknown = set(params) - {"itemsize", "rotate", "zstd_level", "zstd"}
        if unknown:
            raise FormatError(f"bytegroup codec: unknown config keys {sorted(unknown)}")
        return cls(**params)

    # -- chunk level ---------------------------------------------------------------------
    def _planes(self, chunk: np.ndarray):
        s = self.itemsize
        n = chunk.size // s
        planes = np.empty((s, n), np.uint8)
        _split(chunk, s, self.rotate, planes)
        return planes, chunk[n * s:]

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        s = self.itemsize
        planes, tail = self._planes(chunk)
        n = planes.shape[1]
        counts = np.zeros((s, 256), np.int64)
        _plane_counts(planes, counts)
        use_zstd = self.zstd != "never"
        header = np.zeros(5 * s, np.uint8)
        parts = []
        for p in range(s):
            best_m, best = RAW, None
            best_len = n
            if n and np.count_nonzero(counts[p]) > 0:
                hsize = huffman.block_size(counts[p])
                if hsize < best_len:
                    best_m, best_len = HUFFMAN, hsize
            if use_zstd and n:
                z = compress_bytes(planes[p], self.zstd_level)
                if len(z) < best_len:
                    best_m, best_len, best = ZSTD, len(z), z
            if best_m == HUFFMAN:
                best = huffman.encode_block(planes[p], counts[p])
            elif best_m == RAW:
                best = planes[p].tobytes()
            header[5 * p] = best_m
            header[5 * p + 1:5 * p + 5] = np.frombuffer(np.uint32(len(best)).tobytes(), np.uint8)
            parts.append(best)
        return header.tobytes() + b"".join(parts) + tail.tobytes()

    def _layout(self, buf: np.ndarray, total: int, what: str):
        s = self.itemsize
        n = total // s
        t = total - n * s
        if buf.size < 5 * s:
            raise FormatError(f"{what}: payload of {buf.size} bytes is shorter than its {5 * s}-byte header")
        entries = []
        off = 5 * s
        for p in range(s):
            m = int(buf[5 * p])
            ln = int(buf[5 * p + 1:5 * p + 5].view("<u4")[0])
            if m not in _METHOD_NAMES:
                raise FormatError(f"{what}: plane {p} has unknown method {m}")
            if m == RAW and ln != n:
                raise FormatError(f"{what}: raw plane {p} holds {ln} bytes, expected {n}")
            if off + ln > buf.size:
                raise FormatError(f"{what}: plane {p} ({ln} bytes at {off}) runs past the payload end {buf.size}")
            entries.append((m, off, ln))
            off += ln
        if off + t != buf.size:
            raise FormatError(f"{what}: payload is {buf.size} bytes, its header implies {off + t}")
        return entries, n, t

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        what = "bytegroup chunk"
        buf = np.frombuffer(encoded, np.uint8)
        entries, n, t = self._layout(buf, out.size, what)
        s = self.itemsize
        planes = np.empty((s, n), np.uint8)
        for p, (m, off, ln) in enumerate(entries):
            body = buf[off:off + ln]
            if m == RAW:
                planes[p] = body
            elif m == HUFFMAN:
                huffman.decode_block(body, planes[p], f"{what} plane {p}")
            else:
                decompress_into(body, planes[p], f"{what} plane {p} (zstd)")
        _merge(planes, s, self.rotate, out)
        if t:
            out[n * s:] = buf[buf.size - t:]
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        planes, _ = self._planes(d)
        try:
            entries, n, t = self._layout(np.frombuffer(encoded, np.uint8), d.size, "bytegroup chunk")
        except FormatError:
            return super().streams(decoded, encoded)
        return [StreamStat(f"plane{p}({_METHOD_NAMES[m]})", n, byte_entropy_bits(planes[p]), 8 * ln)
                for p, (m, off, ln) in enumerate(entries)]
