"""Test helper: small real BF16/F16/F32 tensors from the MiniLM package (skipped when absent)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches"))


def minilm_f32_tensors(count):
    try:
        import data  # benches/data.py
    except ImportError:
        return []
    p = data.minilm_path()
    if not p:
        return []
    t = data.load_tensors(p)
    names = sorted(t, key=lambda k: -t[k][1].size)[1:1 + count]  # skip the 23 MB embedding
    return [np.array(t[k][1]).view(np.float32) for k in names]


def minilm_bf16_tensors(count):
    out = []
    for f in minilm_f32_tensors(count):
        u = f.view(np.uint32).astype(np.uint64)
        out.append(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))
    return out
