"""`ggml`: lossless coding of GGUF/GGML quantized blocks, with scales and quants in separate streams.

A chunk is a whole number of blocks of one ggml type. Each block is cut into its fields (table
below, byte offsets inside the block); field f of every block is gathered into one stream, and
2-byte fields (f16 scales) are further split into their low and high byte planes. Each stream is one
`fieldcode` stream (best of Huffman, zstd, raw). Reassembly is the exact inverse, so the blocks are
restored byte for byte.

| type | elements/block | bytes/block | fields (name:offset:size, "h" = f16 split into 2 planes) |
|---|---|---|---|
| Q4_0 | 32 | 18 | d:0:2h, qs:2:16 |
| Q4_1 | 32 | 20 | d:0:2h, m:2:2h, qs:4:16 |
| Q5_0 | 32 | 22 | d:0:2h, qh:2:4, qs:6:16 |
| Q5_1 | 32 | 24 | d:0:2h, m:2:2h, qh:4:4, qs:8:16 |
| Q8_0 | 32 | 34 | d:0:2h, qs:2:32 |
| Q4_K | 256 | 144 | d:0:2h, dmin:2:2h, scales:4:12, qs:16:128 |
| Q5_K | 256 | 176 | d:0:2h, dmin:2:2h, scales:4:12, qh:16:32, qs:48:128 |
| Q6_K | 256 | 210 | ql:0:128, qh:128:64, scales:192:16, d:208:2h |

Chunk payload: the streams back to back in table order (f16 fields: low plane, then high plane),
each a `fieldcode` stream; nothing else. The chunk's size MUST be a multiple of the block size.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat
from . import fieldcode

# name -> (elements per block, bytes per block, [(field, offset, size, is_f16)])
LAYOUTS: dict[str, tuple[int, int, list[tuple[str, int, int, bool]]]] = {
    "Q4_0": (32, 18, [("d", 0, 2, True), ("qs", 2, 16, False)]),
    "Q4_1": (32, 20, [("d", 0, 2, True), ("m", 2, 2, True), ("qs", 4, 16, False)]),
    "Q5_0": (32, 22, [("d", 0, 2, True), ("qh", 2, 4, False), ("qs", 6, 16, False)]),
    "Q5_1": (32, 24, [("d", 0, 2, True), ("m", 2, 2, True), ("qh", 4, 4, False), ("qs", 8, 16, False)]),
    "Q8_0": (32, 34, [("d", 0, 2, True), ("qs", 2, 32, False)]),
    "Q4_K": (256, 144, [("d", 0, 2, True), ("dmin", 2, 2, True), ("scales", 4, 12, False),
                        ("qs", 16, 128, False)]),
    "Q5_K": (256, 176, [("d", 0, 2, True), ("dmin", 2, 2, True), ("scales", 4, 12, False),
                        ("qh", 16, 32, False), ("qs", 48, 128, False)]),
    "Q6_K": (256, 210, [("ql", 0, 128, False), ("qh", 128, 64, False), ("scales", 192, 16, False),
                        ("d", 208, 2, True)]),
}


def _streams_of(blocks: np.ndarray, fields) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, off, size, f16 in fields:
        col = blocks[:, off:off + size]
        if f16:
            out.append((name + ".lo", np.ascontiguousarray(col[:, 0])))
            out.append((name + ".hi", np.ascontiguousarray(col[:, 1])))
        else:
            out.append((name, np.ascontiguousarray(col).reshape(-1)))
    return out


@register_codec
class GGMLBlocks(Codec):
    codec_id = "ggml"
    description = "GGUF quantized blocks (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K): scale and quant streams coded apart"
    max_expansion = 1.01
    default_chunk_size = 1 << 20

    def __init__(self, type: str = "Q4_0", zstd_level: int = 19):  # noqa: A002
        if type not in LAYOUTS:
            raise ValueError(f"ggml codec: unsupported block type {type!r} (known: {sorted(LAYOUTS)})")
        if not isinstance(zstd_level, int) or not 0 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [0, 22], got {zstd_level!r}")
        self.type, self.zstd_level = type, zstd_level
        self.block_elems, self.block_bytes, self.fields = LAYOUTS[type]

    def chunk_alignment(self) -> int:
        return self.block_bytes

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "type": self.type, "zstd_level": self.zstd_level}

    @classmethod
    def from_config(cls, config):
        unknown = set(config) - {"id", "type", "zstd_level"}
        if unknown:
            raise FormatError(f"ggml codec: unknown config keys {sorted(unknown)}")
        return cls(config.get("type", "Q4_0"), config.get("zstd_level", 19))

    def _blocks(self, chunk: np.ndarray, what: str) -> np.ndarray:
        if chunk.size % self.block_bytes:
            raise FormatError(f"{what}: {chunk.size} bytes is not a whole number of {self.type} blocks "
                              f"({self.block_bytes} bytes each)")
        return chunk.reshape(-1, self.block_bytes)

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        blocks = self._blocks(chunk, "ggml chunk")
        return b"".join(fieldcode.encode_stream(s, self.zstd_level) for _, s in _streams_of(blocks, self.fields))

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        what = f"ggml {self.type} chunk"
        buf = np.frombuffer(encoded, np.uint8)
        blocks = self._blocks(out, what)
        nb = blocks.shape[0]
        pos = 0
        tmp = np.empty(nb * max(size for _, _, size, _ in self.fields), np.uint8)
        for name, off, size, f16 in self.fields:
            if f16:
                for plane in (0, 1):
                    t = tmp[:nb]
                    pos = fieldcode.decode_stream(buf, pos, t, f"{what} field {name}")
                    blocks[:, off + plane] = t
            else:
                t = tmp[:nb * size]
                pos = fieldcode.decode_stream(buf, pos, t, f"{what} field {name}")
                blocks[:, off:off + size] = t.reshape(nb, size)
        if pos != buf.size:
            raise FormatError(f"{what}: {buf.size - pos} trailing bytes after the last stream")
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        buf = np.frombuffer(encoded, np.uint8)
        stats, pos = [], 0
        try:
            for name, s in _streams_of(self._blocks(d, "ggml chunk"), self.fields):
                method, bits, pos = fieldcode.stream_bits(buf, pos, "ggml chunk")
                stats.append(StreamStat(f"{name}({method})", s.size, fieldcode.entropy(s), bits))
        except FormatError:
            return super().streams(decoded, encoded)
        return stats
