"""`int4pack`: lossless coding of int32 tensors that pack eight 4-bit values (GPTQ/AWQ `qweight`, `qzeros`).

Each little-endian 32-bit word holds nibbles n0..n7 (n_j = (w >> 4j) & 15). A chunk (a whole number
of words) is unpacked into its nibble stream, coded, and repacked bit-exactly on decode.

Chunk payload: u8 symbol mode, then one `fieldcode` stream:
- mode 0 (nibbles): the stream holds one nibble per byte (values 0..15), n0..n7 of word 0, then word 1, ...
- mode 1 (pairs): the stream holds two nibbles per byte, (n_{2k+1} << 4) | n_{2k} — the word's bytes.
The encoder takes the smaller (pairs capture the joint distribution of neighbouring codes; nibbles
have a 16-symbol table). Anything else is a `FormatError`.

`detect(tensors)` finds GPTQ/AWQ layouts in a safetensors header by names and dtypes
(`<p>.qweight` I32 with `<p>.scales`, optional `<p>.qzeros` I32 and `<p>.g_idx` I32) and checks that
their shapes agree, raising `PackedLayoutError` when they do not.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat
from . import fieldcode


class PackedLayoutError(FormatError):
    """Packed int4 tensors (qweight, qzeros, scales, g_idx) whose shapes do not agree."""


def unpack_nibbles(words_u8: np.ndarray) -> np.ndarray:
    b = words_u8.reshape(-1)
    out = np.empty(b.size * 2, np.uint8)
    out[0::2] = b & 15
    out[1::2] = b >> 4
    return out


def pack_nibbles(nibbles: np.ndarray, out: np.ndarray) -> np.ndarray:
    out[:] = nibbles[0::2] | (nibbles[1::2] << 4)
    return out


@register_codec
class Int4Pack(Codec):
    codec_id = "int4pack"
    description = "int32 words packing 8 nibbles (GPTQ/AWQ qweight, qzeros): nibble stream coded, repacked exactly"
    max_expansion = 1.01
    default_chunk_size = 1 << 20

    def __init__(self, zstd_level: int = 19):
        if not isinstance(zstd_level, int) or not 0 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [0, 22], got {zstd_level!r}")
        self.zstd_level = zstd_level

    def chunk_alignment(self) -> int:
        return 4

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "zstd_level": self.zstd_level}

    @classmethod
    def from_config(cls, config):
        unknown = set(config) - {"id", "zstd_level"}
        if unknown:
            raise FormatError(f"int4pack codec: unknown config keys {sorted(unknown)}")
        return cls(config.get("zstd_level", 19))

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        if chunk.size % 4:
            raise ValueError(f"int4pack: chunk of {chunk.size} bytes is not whole 32-bit words")
        a = fieldcode.encode_stream(unpack_nibbles(chunk), self.zstd_level)
        b = fieldcode.encode_stream(chunk, self.zstd_level)
        return b"\x00" + a if len(a) <= len(b) else b"\x01" + b

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        what = "int4pack chunk"
        buf = np.frombuffer(encoded, np.uint8)
        if out.size % 4:
            raise FormatError(f"{what}: {out.size} bytes is not whole 32-bit words")
        if buf.size < 1 or buf[0] > 1:
            raise FormatError(f"{what}: missing or unknown symbol mode {buf[:1].tolist()}")
        if buf[0] == 0:
            nib = np.empty(out.size * 2, np.uint8)
            end = fieldcode.decode_stream(buf, 1, nib, what)
            if nib.size and int(nib.max()) > 15:
                raise FormatError(f"{what}: nibble stream holds a value above 15")
            pack_nibbles(nib, out)
        else:
            end = fieldcode.decode_stream(buf, 1, out, what)
        if end != buf.size:
            raise FormatError(f"{what}: {buf.size - end} trailing bytes after the stream")
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        buf = np.frombuffer(encoded, np.uint8)
        try:
            name, bits, _ = fieldcode.stream_bits(buf, 1, "int4pack chunk")
        except FormatError:
            return super().streams(decoded, encoded)
        mode = "nibbles" if buf[0] == 0 else "pairs"
        nib = unpack_nibbles(d)
        return [StreamStat(f"{mode}({name})", nib.size, fieldcode.entropy(nib), bits + 8),
                StreamStat("pairs(bound)", d.size, fieldcode.entropy(d), 0)]


def detect(tensors) -> dict[str, str]:
    """GPTQ/AWQ packed tensors in a safetensors header: name -> role ("qweight", "qzeros", "scales", "g_idx").

    `tensors` are objects with `.name`, `.dtype`, `.shape`. Raises `PackedLayoutError` when a
    `qweight` and its companions disagree on shapes.
    """
    by = {t.name: t for t in tensors}
    roles: dict[str, str] = {}
    for name, t in by.items():
        if not name.endswith(".qweight") or t.dtype != "I32":
            continue
        p = name[: -len("qweight")]
        sc, qz, gi = by.get(p + "scales"), by.get(p + "qzeros"), by.get(p + "g_idx")
        if sc is None:
            continue   # not a GPTQ/AWQ layout we know; left to the dtype policy

        def bad(msg):
            return PackedLayoutError(f"packed int4 tensors {p}*: {msg}")

        if len(t.shape) != 2 or len(sc.shape) != 2:
            raise bad(f"qweight {t.shape} and scales {sc.shape} must both be 2-D")
        G, N = sc.shape
        if t.shape[1] == N:                 # GPTQ: packed along the input dimension
            K = 8 * t.shape[0]
        elif 8 * t.shape[1] == N:           # AWQ: packed along the output dimension
            K = t.shape[0]
        else:
            raise bad(f"qweight {t.shape} does not match scales {sc.shape}: expected qweight "
                      f"[K/8, {N}] (GPTQ) or [K, {N}/8] (AWQ)")
        if G < 1 or G > K:
            raise bad(f"scales {sc.shape} has {G} groups for K = {K} input rows")
        if qz is not None:
            if qz.dtype != "I32" or list(qz.shape) != [G, N // 8] or N % 8:
                raise bad(f"qzeros {qz.dtype}{qz.shape} does not match scales {sc.shape}: "
                          f"expected I32[{G}, {N // 8}]")
            roles[p + "qzeros"] = "qzeros"
        if gi is not None:
            if gi.dtype != "I32" or list(gi.shape) != [K]:
                raise bad(f"g_idx {gi.dtype}{gi.shape} does not match qweight {t.shape}: expected I32[{K}]")
            roles[p + "g_idx"] = "g_idx"
        roles[name] = "qweight"
        roles[p + "scales"] = "scales"
    return roles
