"""Converting user arrays (numpy, torch, bytes) to flat bytes + dtype name, and back."""
from __future__ import annotations

import math

import numpy as np

from .dtypes import from_numpy, from_torch, lookup, torch_dtype


def to_bytes_and_dtype(obj) -> tuple[np.ndarray, str, list[int]]:
    """A flat uint8 view of `obj`, its safetensors dtype name and its shape."""
    if isinstance(obj, np.generic):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)  # keeps 0-d shape
        name = "U8" if arr.dtype == np.uint8 else from_numpy(arr.dtype)
        return arr.reshape(-1).view(np.uint8), name, list(arr.shape)
    if type(obj).__module__.startswith("torch"):
        import torch

        t = obj.detach().contiguous().cpu()
        name = from_torch(t.dtype)
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        return flat.numpy(), name, list(t.shape)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(memoryview(obj).cast("B"), dtype=np.uint8)
        return arr, "U8", [arr.size]
    raise TypeError(f"cannot compress {type(obj).__name__}: pass a numpy array, a torch tensor or bytes")


def from_bytes(raw: np.ndarray, dtype: str, shape, framework: str = "np"):
    """The tensor for decoded bytes: numpy (BF16/FP8 as their unsigned storage) or torch."""
    dt = lookup(dtype)
    shape = tuple(int(s) for s in shape)
    if framework in ("np", "numpy"):
        if dt.name == "OPAQUE":
            return raw
        return raw.view(dt.numpy).reshape(shape)
    if framework in ("pt", "torch"):
        import torch

        if dt.name == "OPAQUE":
            return torch.from_numpy(raw)
        t = torch.from_numpy(raw)
        target = torch_dtype(dt.name)
        if math.prod(shape) == 0:
            return torch.empty(shape, dtype=target)
        return t.view(target).reshape(shape)
    raise ValueError(f"unknown framework {framework!r} (use 'np' or 'pt')")


def torch_aligned(nbytes: int) -> np.ndarray:
    """A uint8 buffer allocated by torch (64-byte aligned, like every torch tensor).

    Alignment matters for bit-identical outputs: BLAS kernels may pick a different blocking, and
    so a different summation order, for weights at other alignments.
    """
    import torch

    return torch.empty(max(nbytes, 1), dtype=torch.uint8).numpy()[:nbytes]
