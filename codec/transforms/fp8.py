"""`fp8`: lossless coding of FP8 tensors (F8_E4M3, F8_E5M2).

Measured on FP8 casts of real weights (MiniLM, Whisper tiny.en; benches/quant.py): entropy-coding the
whole byte beats coding the exponent alone (the joint sign/exponent/mantissa order-0 entropy is below
H(exponent) + the raw sign and mantissa bits), and per-chunk tables beat one table per tensor. Some
tensors (sinusoidal position tables) are highly structured; there zstd wins, so each chunk is one
`fieldcode` stream: the best of rANS and Huffman on the whole byte, zstd and raw (rANS gets closer
to the entropy than Huffman on these peaked distributions).

Chunk payload: one `fieldcode` stream (u8 method, u32 LE length, body) holding all the chunk's bytes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat
from . import fieldcode

_FIELDS = {"e4m3": (4, 3), "e5m2": (5, 2)}


@register_codec
class FP8(Codec):
    codec_id = "fp8"
    description = "FP8 e4m3/e5m2: whole-byte Huffman per chunk, zstd where it wins (lossless)"
    max_expansion = 1.01
    default_chunk_size = 1 << 18

    def __init__(self, format: str = "e4m3", zstd_level: int = 19):  # noqa: A002
        if format not in _FIELDS:
            raise ValueError(f"fp8 format must be 'e4m3' or 'e5m2', got {format!r}")
        if not isinstance(zstd_level, int) or not 0 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [0, 22], got {zstd_level!r}")
        self.format, self.zstd_level = format, zstd_level

    def fit(self, source, dtype: str) -> "FP8":
        fmt = {"F8_E4M3": "e4m3", "F8_E5M2": "e5m2"}.get(dtype, self.format)
        return FP8(fmt, self.zstd_level)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "format": self.format, "zstd_level": self.zstd_level}

    @classmethod
    def from_config(cls, config):
        unknown = set(config) - {"id", "format", "zstd_level"}
        if unknown:
            raise FormatError(f"fp8 codec: unknown config keys {sorted(unknown)}")
        return cls(config.get("format", "e4m3"), config.get("zstd_level", 19))

    def encode(self, chunk: np.ndarray) -> bytes:
        return fieldcode.encode_stream(chunk, self.zstd_level, ans=True)

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        buf = np.frombuffer(encoded, np.uint8)
        end = fieldcode.decode_stream(buf, 0, out, "fp8 chunk")
        if end != buf.size:
            raise FormatError(f"fp8 chunk: {buf.size - end} trailing bytes after the stream")
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        e, m = _FIELDS[self.format]
        try:
            name, bits, _ = fieldcode.stream_bits(np.frombuffer(encoded, np.uint8), 0, "fp8 chunk")
        except FormatError:
            return super().streams(decoded, encoded)
        return [StreamStat(f"byte({name})", d.size, fieldcode.entropy(d), bits),
                StreamStat("sign", d.size, fieldcode.entropy(d >> 7), 0),
                StreamStat("exponent", d.size, fieldcode.entropy((d >> m) & ((1 << e) - 1)), 0),
                StreamStat("mantissa", d.size, fieldcode.entropy(d & ((1 << m) - 1)), 0)]
