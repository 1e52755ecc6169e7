"""`zstd`: Zstandard (via `zstandard`) on the chunk's bytes, one frame per chunk."""
from __future__ import annotations

import threading

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec

_local = threading.local()


def _compressor(level: int):
    import zstandard

    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        # Content size and checksum off: the container stores both already.
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=False,
                                                     write_checksum=False, threads=0)
    return c


def _decompressor():
    import zstandard

    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress_bytes(data, level: int = 3) -> bytes:
    """Zstandard-compress a bytes-like object (shared with other codecs' streams)."""
    return _compressor(level).compress(data)


def decompress_into(encoded, out: np.ndarray, what: str = "zstd stream") -> np.ndarray:
    """Decompress into a uint8 array of exactly the expected size, or raise FormatError."""
    import zstandard

    try:
        data = _decompressor().decompress(encoded, max_output_size=max(out.size, 1))
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is corrupt: {exc}") from None
    if len(data) != out.size:
        raise FormatError(f"{what} decodes to {len(data)} bytes, expected {out.size}")
    out[:] = np.frombuffer(data, dtype=np.uint8)
    return out


@register_codec
class Zstd(Codec):
    codec_id = "zstd"
    description = "Zstandard on the raw bytes (generic baseline)"
    max_expansion = 1.01

    def __init__(self, level: int = 3):
        if not isinstance(level, int) or isinstance(level, bool) or not -7 <= level <= 22:
            raise ValueError(f"zstd level must be an integer in [-7, 22], got {level!r}")
        self.level = level

    def get_config(self):
        return {"id": self.codec_id, "level": self.level}

    def encode(self, chunk: np.ndarray) -> bytes:
        return compress_bytes(np.ascontiguousarray(chunk, dtype=np.uint8), self.level)

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        return decompress_into(encoded, out, "zstd chunk")
