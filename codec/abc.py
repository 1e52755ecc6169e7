"""The codec contract, in the spirit of numcodecs' `Codec`.

A codec turns one *chunk* of a tensor's bytes into an encoded byte string and back.
The container (`codec.formats`) owns everything around it: chunking, checksums,
raw fallback for chunks that do not shrink, sections, and the file layout.

Rules every codec follows:
- `get_config()` is JSON-only and holds every parameter that changes the bits
  (no library default is implied); `from_config(get_config())` decodes what `encode` wrote.
- Encoding is deterministic: same input and config, same bytes.
- `decode` treats its input as hostile: it fills `out` exactly or raises `FormatError`.
- Two classes may share a `codec_id` only if each decodes the other's output.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .stats import StreamStat

if False:  # typing only
    from .source import TensorSource


class Codec(ABC):
    codec_id: ClassVar[str]
    #: False for codecs whose decode differs from the input (quantizers).
    lossless: ClassVar[bool] = True
    #: Upper bound of encoded/decoded size for any input, used to size buffers before encoding.
    max_expansion: ClassVar[float] = 1.0
    #: One-line description for `codec codecs`.
    description: ClassVar[str] = ""
    #: Frames of this codec store their JSON config packed (format 1.1, `formats/metapack.py`)
    #: when that is smaller: for codecs whose inputs are small next to their config.
    packed_config: ClassVar[bool] = False

    # -- frame level -------------------------------------------------------------------
    def fit(self, source: "TensorSource", dtype: str) -> "Codec":
        """Return a codec configured for this tensor (e.g. with its Huffman table).

        `source` gives the tensor's bytes (`source.size`, `source.read(off, n)`,
        `source.iter_chunks(n)`); read it a piece at a time, never all at once, so that
        memory stays bounded. `dtype` is the safetensors dtype name. The default needs
        nothing from the data.
        """
        return self

    def chunk_alignment(self) -> int:
        """Chunks handed to `encode` are a multiple of this many bytes (except the last)."""
        return 1

    #: Section types (see formats/SPEC.md) that `extra_sections` returns, declared up front
    #: so the container can size the frame header before encoding.
    extra_section_types: ClassVar[tuple[int, ...]] = ()

    def extra_sections(self, chunks: list[bytes | None], decoded_sizes: list[int]) -> dict[int, bytes]:
        """Frame sections computed from the encoded chunks (e.g. a GPU sync index).

        Called once per frame, only if `extra_section_types` is non-empty, with each chunk's
        encoded bytes (None for chunks the container stored raw) and decoded size in bytes.
        """
        return {}

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list["StreamStat"]:
        """Per-stream statistics of one chunk for `codec inspect`: order-0 entropy vs bits spent.

        Codecs that split a chunk into several streams (exponent, sign+mantissa, byte
        planes) override this to report each one.
        """
        from .stats import byte_entropy_bits

        return [StreamStat("bytes", int(decoded.size), byte_entropy_bits(decoded), 8 * len(encoded))]

    # -- chunk level -------------------------------------------------------------------
    @abstractmethod
    def encode(self, chunk: np.ndarray) -> bytes:
        """Encode a flat uint8 array."""

    @abstractmethod
    def decode(self, encoded: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        """Decode into the flat uint8 array `out` (its size is the chunk's decoded size)."""

    # -- configuration -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        params = {k: v for k, v in config.items() if k != "id"}
        return cls(**params)

    def describe(self) -> str:
        """Short human description of the pipeline, for `codec inspect`."""
        params = ",".join(f"{k}={v}" for k, v in self.get_config().items()
                          if k != "id" and not isinstance(v, (list, dict)))
        return f"{self.codec_id}({params})" if params else self.codec_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(self.codec_id)
