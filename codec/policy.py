"""The `auto` policy: which codec each tensor gets when the user does not say.

The choice is written into every frame (codec id and full config), so decoding never depends on
this policy, and `codec inspect` shows it per tensor.

Policy (levels: None = default, "max" = highest compression, an int = zstd level where zstd is used):
- BF16 -> `exponent`: Huffman on the exponent joined with the top mantissa bits, raw sign and low
  mantissa bits. `fit` picks per tensor the number of joined mantissa bits k that gives the smallest
  frame: k in {0, 1} by default (k = 0 is DFloat11's layout; k = 1 is about 0.3 points smaller on
  real weights). At level "max" -> `value16` (order-0 rANS on the top 16 - r bits of the value, r
  low bits raw, r and the table precision fitted per tensor), unless `exponent` with k in
  {0, 1, 2, 3} gives the smaller frame for that tensor (`Value16(compare_exponent=True).fit`).
- F16, F32, F64 and integer dtypes (I8..I64, U8..U64) -> `bytegroup` (ZipNN layout): exponent
  rotated into one byte for BF16/F32/F64, byte planes, per chunk and plane the best of Huffman, zstd
  (integers only unless level "max") and raw.
- F8_E4M3, F8_E5M2 -> `fp8`: whole-byte Huffman per chunk, zstd where it wins.
- GPTQ/AWQ packed int4 tensors (found by `codec.transforms.int4.detect` from names and dtypes in a
  safetensors header: `qweight`/`qzeros` I32) -> `int4pack`; their `scales` and `g_idx` follow the
  dtype rules. GGUF files: quantized blocks -> `ggml` (per type), F32/F16 tensors by dtype.
- everything else (BOOL, unknown) -> `zstd` level 3 (19 at level "max").
A chunk that does not shrink is stored raw by the container.
"""
from __future__ import annotations

from .abc import Codec
from .registry import get_codec

_BYTEGROUP = {"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"}


def _ggml_types():
    from .transforms.ggml import LAYOUTS

    return LAYOUTS


def packed_codecs(tensors, level=None) -> dict[str, Codec]:
    """Per-tensor codecs for GPTQ/AWQ packed int4 layouts in a safetensors header (see int4.detect)."""
    from .transforms.int4 import detect

    return {name: get_codec({"id": "int4pack", "zstd_level": 19})
            for name, role in detect(tensors).items() if role in ("qweight", "qzeros")}


def _is_max(level) -> bool:
    return level == "max"


def choose_codec(dtype: str, level=None) -> Codec:
    """The codec `auto` picks for a tensor of this safetensors dtype (before `fit`)."""
    if dtype == "BF16":
        from .entropy.exponent import Exponent

        if _is_max(level):
            from .entropy.value16 import Value16

            return Value16(compare_exponent=True)

        return Exponent(candidates=[0, 1, 2, 3] if _is_max(level) else [0, 1])
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return get_codec({"id": "fp8", "format": "e4m3" if dtype == "F8_E4M3" else "e5m2", "zstd_level": 19})
    if dtype.startswith("GGUF_") and dtype[5:] in _ggml_types():
        return get_codec({"id": "ggml", "type": dtype[5:], "zstd_level": 19})
    if dtype in _BYTEGROUP:
        zl = 19 if _is_max(level) else (level if isinstance(level, int) else 3)
        return get_codec({"id": "bytegroup", "zstd_level": zl,
                          "zstd": "always" if _is_max(level) else "auto"})
    zl = 19 if _is_max(level) else (level if isinstance(level, int) else 3)
    return get_codec({"id": "zstd", "level": zl})


def resolve(spec, dtype: str, level=None) -> Codec:
    """Turn the user's `codec=` argument (\"auto\", an id, a config dict or a Codec) into a codec."""
    if spec is None or spec == "auto":
        return choose_codec(dtype, level)
    if isinstance(spec, str) and level is not None:
        if spec == "zstd":
            return get_codec({"id": "zstd", "level": 19 if _is_max(level) else level})
        if spec == "exponent":
            from .entropy.exponent import Exponent

            return Exponent(candidates=[0, 1, 2, 3] if _is_max(level) else [0, 1])
        if spec == "value16":
            from .entropy.value16 import Value16

            return Value16()
        if spec == "bytegroup":
            return choose_codec("F32", level) if dtype not in _BYTEGROUP else choose_codec(dtype, level)
        return get_codec({"id": spec, "level": level})
    return get_codec(spec)
