"""Frames for the GPU kernel tests: the exponent codec with its GPU sync section, synthetic BF16."""
from __future__ import annotations

import io

import numpy as np

from codec import datasets
from codec.formats.frame import parse_frame, write_frame
from codec.registry import get_codec
from codec.source import ArraySource


def make_frame(raw: np.ndarray, shape, *, sync_section: bool = True, chunk_size: int = 1 << 18, **cfg):
    """An exponent frame; with `sync_section` the container writes the GPU sync index (section 4)."""
    codec = get_codec({"id": "exponent", "gpu_sync": sync_section, **cfg}).fit(ArraySource(raw), "BF16")
    bio = io.BytesIO()
    write_frame(bio, ArraySource(raw), codec, "BF16", list(shape), chunk_size=chunk_size)
    return parse_frame(memoryview(bio.getvalue()))


def bf16_from_f16(raw: np.ndarray) -> np.ndarray:
    return datasets.f32_to_bf16_bits(raw.view(np.float16).astype(np.float32)).view(np.uint8)


def synthetic(n: int, seed: int, wide: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32) * 0.02
    if wide:   # rare huge/tiny exponents -> long codes beyond the 11-bit lookup
        idx = rng.choice(n, n // 50, replace=False)
        x[idx] *= np.exp2(rng.integers(-60, 60, idx.size)).astype(np.float32)
        x[:4] = np.array([0.0, -0.0, np.inf, np.nan], np.float32)[:n]
    return datasets.f32_to_bf16_bits(x).view(np.uint8)
