"""Test helper: small real F32 tensors from the MiniLM package (empty when it is absent)."""
import numpy as np

from codec import datasets


def minilm_f32_tensors(count):
    try:
        tensors = datasets.minilm_tensors("F32")
    except FileNotFoundError:
        return []
    names = sorted(tensors, key=lambda k: -tensors[k][2].size)[1:1 + count]  # skip the 23 MB embedding
    return [np.array(tensors[k][2]).view(np.float32) for k in names]


def minilm_bf16_tensors(count):
    return [datasets.f32_to_bf16_bits(f) for f in minilm_f32_tensors(count)]
