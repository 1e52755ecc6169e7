"""The `auto` policy: which codec each tensor gets when the user does not say.

The choice is written into every frame, so decoding never depends on this policy.
Policy (format 1.0 codecs available in this build):
- every dtype -> `zstd` level 3; a chunk that does not shrink is stored raw by the container.
"""
from __future__ import annotations

from .abc import Codec
from .registry import get_codec


def choose_codec(dtype: str, level: int | None = None) -> Codec:
    """The codec `auto` picks for a tensor of this safetensors dtype."""
    return get_codec({"id": "zstd", "level": 3 if level is None else level})


def resolve(spec, dtype: str, level: int | None = None) -> Codec:
    """Turn the user's `codec=` argument (\"auto\", an id, a config dict or a Codec) into a codec."""
    if spec is None or spec == "auto":
        return choose_codec(dtype, level)
    if isinstance(spec, str) and level is not None:
        return get_codec({"id": spec, "level": level})
    return get_codec(spec)
