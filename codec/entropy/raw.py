"""`raw`: bytes stored as they are."""
from __future__ import annotations

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec


@register_codec
class Raw(Codec):
    codec_id = "raw"
    description = "bytes stored unchanged"

    def encode(self, chunk: np.ndarray) -> bytes:
        return memoryview(np.ascontiguousarray(chunk, dtype=np.uint8)).tobytes()

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        if len(encoded) != out.size:
            raise FormatError(f"raw chunk holds {len(encoded)} bytes, expected {out.size}")
        out[:] = np.frombuffer(encoded, dtype=np.uint8)
        return out
