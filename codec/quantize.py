"""Quantize-then-entropy-code (LOSSY): round-to-nearest per-group int8 / int4 / fp8 with torch, codes
entropy-coded, scales stored beside them; decoding returns the dequantized tensor in its original dtype.

This is the only lossy part of `codec`. Frames written with the `quant` codec carry FLAG_LOSSY, the
file manifest records `"lossy"` with the sha256 of the dequantized file, and `codec decompress` /
`codec verify` check that hash (never the original's): a lossy restore is never reported as the
original.

Quantizer (groups are runs of `group_size` consecutive elements in row-major order; the last group
of a chunk may be shorter; all arithmetic in float32, rounding half to even):
- int8: s = max|x| / 127 (1 where 0); q = clamp(round(x / s), -127, 127); x' = q * s
- int4: lo = min(min x, 0), hi = max(max x, 0); s = (hi - lo) / 15 (1 where 0);
        z = clamp(round(-lo / s), 0, 15); q = clamp(round(x / s) + z, 0, 15); x' = (q - z) * s
- fp8:  s = max|x| / 448 (1 where 0); q = float8_e4m3fn(clamp(x / s, -448, 448)); x' = float(q) * s
x' is then rounded to the tensor's dtype (BF16/F16: nearest, ties to even). `reference()` is the same
computation in torch alone, the oracle the tests compare `codec decompress` against bit for bit.

Chunk payload (n elements, G = ceil(n / group_size) groups): `fieldcode` streams back to back:
codes (n bytes: int8 two's complement, int4 values 0..15 one per byte, fp8 e4m3fn bits), scales
(G float32 LE), and for int4 zero points (G bytes, 0..15).
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np

from .abc import Codec
from .checksum import xxh64
from .errors import BackendUnavailableError, CodecError, FormatError
from .registry import register_codec
from .source import TensorSource
from .stats import StreamStat
from .transforms import fieldcode

SCHEMES = ("int8", "int4", "fp8")
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


def _require_torch():
    """torch, or BackendUnavailableError (CLI exit 3) for the lossy quantizer."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("the lossy quantizer needs torch (pip install 'codec[torch]')") from exc
    return torch

def _e4m3fn_table() -> np.ndarray:
    """float32 value of every float8_e4m3fn bit pattern (bias 7, no infinities, S.1111.111 = NaN)."""
    v = np.arange(256)
    s = np.where(v >> 7, -1.0, 1.0)
    e = (v >> 3) & 15
    m = v & 7
    val = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7.0)) * s
    val[(v & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


E4M3FN = _e4m3fn_table()


def _to_dtype_bytes(x32: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return x32.view(np.uint8)
    if dtype == "F16":
        return x32.astype(np.float16).view(np.uint8)
    from .datasets import f32_to_bf16_bits

    return f32_to_bf16_bits(x32).view(np.uint8)


def _from_dtype_bytes(raw: np.ndarray, dtype: str) -> np.ndarray:
    raw = np.ascontiguousarray(raw, np.uint8)
    if dtype == "F32":
        return raw.view(np.float32)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _groups_torch(x, gs: int):
    """Split a flat float32 torch tensor into full groups [G, gs] and a tail (or None)."""
    n = x.numel()
    full = n // gs * gs
    return x[:full].reshape(-1, gs), (x[full:].reshape(1, -1) if full < n else None)


def _quant_rows(x, scheme: str):
    """(codes, scale, zero) for the rows of a float32 torch tensor [G, g]."""
    torch = _require_torch()

    if not bool(torch.isfinite(x).all()):
        raise CodecError("lossy quantization needs finite weights (found NaN or infinity)")
    one = torch.ones((), dtype=torch.float32)
    if scheme == "int8":
        s = x.abs().amax(1) / 127
        s = torch.where(s == 0, one, s)
        q = torch.clamp(torch.round(x / s[:, None]), -127, 127)
        return q.to(torch.int8), s, None
    if scheme == "int4":
        lo = torch.clamp(x.amin(1), max=0)
        hi = torch.clamp(x.amax(1), min=0)
        s = (hi - lo) / 15
        s = torch.where(s == 0, one, s)
        z = torch.clamp(torch.round(-lo / s), 0, 15)
        q = torch.clamp(torch.round(x / s[:, None]) + z[:, None], 0, 15)
        return q.to(torch.uint8), s, z.to(torch.uint8)
    s = x.abs().amax(1) / 448
    s = torch.where(s == 0, one, s)
    q = torch.clamp(x / s[:, None], -448, 448).to(torch.float8_e4m3fn)
    return q, s, None


def _dequant_rows_torch(q, s, z, scheme: str):
    torch = _require_torch()

    if scheme == "int8":
        return q.to(torch.float32) * s[:, None]
    if scheme == "int4":
        return (q.to(torch.float32) - z.to(torch.float32)[:, None]) * s[:, None]
    return q.to(torch.float32) * s[:, None]


def reference(tensor, scheme: str, group_size: int):
    """Quantize and dequantize a torch tensor with torch alone (the test oracle); same dtype and shape.

    Groups follow the flat row-major order and restart at every `chunk_elems` boundary in `codec`;
    the reference matches codec's output whenever chunk boundaries fall on group boundaries, which
    `codec` guarantees (chunks are a multiple of the group size).
    """
    torch = _require_torch()

    x = tensor.detach().reshape(-1).to(torch.float32)
    full, tail = _groups_torch(x, group_size)
    parts = []
    for rows in (full, tail):
        if rows is not None and rows.numel():
            q, s, z = _quant_rows(rows, scheme)
            parts.append(_dequant_rows_torch(q, s, z, scheme).reshape(-1))
    out = torch.cat(parts) if parts else x
    return out.to(tensor.dtype).reshape(tensor.shape)


@register_codec
class Quant(Codec):
    codec_id = "quant"
    lossless = False
    description = "LOSSY round-to-nearest per-group int8/int4/fp8 quantization, codes entropy-coded"
    max_expansion = 1.01
    default_chunk_size = 1 << 20

    def __init__(self, scheme: str = "int8", group_size: int = 128, dtype: str = "F32", zstd_level: int = 19):
        if scheme not in SCHEMES:
            raise ValueError(f"quant scheme must be one of {SCHEMES}, got {scheme!r}")
        if not isinstance(group_size, int) or not 1 <= group_size <= 1 << 20:
            raise ValueError(f"group_size must be in [1, 2^20], got {group_size!r}")
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"quant: dtype must be one of {sorted(FLOAT_DTYPES)}, got {dtype!r}")
        if not isinstance(zstd_level, int) or not 0 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [0, 22], got {zstd_level!r}")
        self.scheme, self.group_size, self.dtype, self.zstd_level = scheme, group_size, dtype, zstd_level
        self.itemsize = FLOAT_DTYPES[dtype]
        self._pending: dict[tuple[int, int], list] = {}
        self._lock = threading.Lock()

    def fit(self, source, dtype: str) -> "Quant":
        return Quant(self.scheme, self.group_size, dtype, self.zstd_level)

    def chunk_alignment(self) -> int:
        return self.group_size * self.itemsize

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "scheme": self.scheme, "group_size": self.group_size,
                "dtype": self.dtype, "zstd_level": self.zstd_level}

    @classmethod
    def from_config(cls, config):
        unknown = set(config) - {"id", "scheme", "group_size", "dtype", "zstd_level"}
        if unknown:
            raise FormatError(f"quant codec: unknown config keys {sorted(unknown)}")
        return cls(config.get("scheme", "int8"), config.get("group_size", 128), config.get("dtype", "F32"),
                   config.get("zstd_level", 19))

    def describe(self) -> str:
        return f"quant({self.scheme},g={self.group_size})"

    # -- encoding -------------------------------------------------------------------------
    def _quantize(self, chunk: np.ndarray) -> bytes:
        torch = _require_torch()

        x = torch.from_numpy(_from_dtype_bytes(chunk, self.dtype).copy())
        full, tail = _groups_torch(x, self.group_size)
        codes, scales, zeros = [], [], []
        for rows in (full, tail):
            if rows is not None and rows.numel():
                q, s, z = _quant_rows(rows, self.scheme)
                codes.append(q.reshape(-1).view(torch.uint8).numpy())
                scales.append(s.numpy().astype("<f4"))
                if z is not None:
                    zeros.append(z.numpy())
        cat = (lambda a, dt: np.concatenate(a) if a else np.zeros(0, dt))
        parts = [fieldcode.encode_stream(cat(codes, np.uint8), self.zstd_level),
                 fieldcode.encode_stream(cat(scales, np.float32).view(np.uint8), self.zstd_level)]
        if self.scheme == "int4":
            parts.append(fieldcode.encode_stream(cat(zeros, np.uint8), self.zstd_level))
        return b"".join(parts)

    def prepare(self, chunk: np.ndarray) -> np.ndarray:
        """Quantize an original chunk; return the bytes it decodes to, and remember its encoding.

        The container checksums the bytes a frame decodes to, so `LossySource` hands the frame
        writer the dequantized bytes and `encode` returns the payload remembered here.
        """
        payload = self._quantize(chunk)
        deq = np.empty(chunk.size, np.uint8)
        self.decode(payload, deq)
        key = (xxh64(deq), deq.size)
        with self._lock:
            ent = self._pending.setdefault(key, [payload, 0])
            ent[1] += 1
        return deq

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        key = (xxh64(chunk), chunk.size)
        with self._lock:
            ent = self._pending.get(key)
            if ent is not None:
                ent[1] -= 1
                if ent[1] == 0:
                    del self._pending[key]
                return ent[0]
        return self._quantize(chunk)   # data not from prepare(): quantize it as given

    # -- decoding -------------------------------------------------------------------------
    def _layout(self, nbytes: int, what: str) -> tuple[int, int]:
        if nbytes % self.itemsize:
            raise FormatError(f"{what}: {nbytes} bytes is not a whole number of {self.dtype} elements")
        n = nbytes // self.itemsize
        return n, -(-n // self.group_size)

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        what = f"quant {self.scheme} chunk"
        buf = np.frombuffer(encoded, np.uint8)
        n, G = self._layout(out.size, what)
        codes = np.empty(n, np.uint8)
        pos = fieldcode.decode_stream(buf, 0, codes, what + " codes")
        sb = np.empty(4 * G, np.uint8)
        pos = fieldcode.decode_stream(buf, pos, sb, what + " scales")
        s = sb.view("<f4").astype(np.float32)
        gi = np.repeat(np.arange(G), self.group_size)[:n]
        if self.scheme == "int8":
            x = codes.view(np.int8).astype(np.float32) * s[gi]
        elif self.scheme == "int4":
            z = np.empty(G, np.uint8)
            pos = fieldcode.decode_stream(buf, pos, z, what + " zero points")
            if n and (int(codes.max()) > 15 or int(z.max()) > 15):
                raise FormatError(f"{what}: int4 code or zero point above 15")
            x = (codes.astype(np.float32) - z.astype(np.float32)[gi]) * s[gi]
        else:
            x = E4M3FN[codes] * s[gi]
        if pos != buf.size:
            raise FormatError(f"{what}: {buf.size - pos} trailing bytes after the last stream")
        out[:] = _to_dtype_bytes(np.ascontiguousarray(x, np.float32), self.dtype)
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        buf = np.frombuffer(encoded, np.uint8)
        try:
            n, G = self._layout(decoded.size, "quant chunk")
            names = ["codes", "scales"] + (["zeros"] if self.scheme == "int4" else [])
            sizes = [n, G, G]
            out, pos = [], 0
            for name, k in zip(names, sizes):
                m, body, ln = fieldcode.stream_extent(buf, pos, "quant chunk")
                out.append(StreamStat(f"{name}({fieldcode.METHOD_NAMES[m]})", k, 0.0, 8 * (5 + ln)))
                pos = body + ln
            codes = np.empty(n, np.uint8)
            fieldcode.decode_stream(buf, 0, codes, "quant chunk codes")
            out[0].entropy_bits = fieldcode.entropy(codes)
            return out
        except FormatError:
            return super().streams(decoded, encoded)


# ------------------------------------------------------------------------------------------
# Feeding the frame writer: dequantized bytes in, hashed in file order
# ------------------------------------------------------------------------------------------
class OrderedHasher:
    """sha256 of pieces fed out of order (by absolute offset), hashed in order."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.pos = 0
        self.pending: dict[int, bytes] = {}
        self.lock = threading.Lock()

    def feed(self, offset: int, data: np.ndarray) -> None:
        with self.lock:
            self.pending[offset] = np.ascontiguousarray(data).tobytes()
            while self.pos in self.pending:
                b = self.pending.pop(self.pos)
                self.h.update(b)
                self.pos += len(b)
                if not b:
                    break

    def hexdigest(self, expected_size: int) -> str:
        if self.pending or self.pos != expected_size:
            raise CodecError(f"internal: hashed {self.pos} of {expected_size} bytes of the lossy output")
        return self.h.hexdigest()


class LossySource(TensorSource):
    """A source whose bytes are what the file decodes to: dequantized for `quant`, else unchanged."""

    def __init__(self, source: TensorSource, base: int, hasher: OrderedHasher, codec: Quant | None = None):
        self.src, self.base, self.hasher, self.codec = source, base, hasher, codec
        self.size = source.size

    def read(self, offset: int, n: int) -> np.ndarray:
        data = self.src.read(offset, n)
        if self.codec is not None:
            data = self.codec.prepare(data)
        self.hasher.feed(self.base + offset, data)
        return data


def eligible(dtype: str, shape) -> bool:
    """Tensors the lossy pipeline quantizes: float matrices (and higher rank); 1-D stays lossless."""
    return dtype in FLOAT_DTYPES and len(shape) >= 2 and int(np.prod(shape)) >= 256
