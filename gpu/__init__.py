"""GPU decoding of compressed tensors, and the CPU runtime that runs the same kernels in tests.

    import codec.gpu
    if codec.gpu.available():
        dec = codec.gpu.BlockDecoder(frames)       # frames of one transformer block; uploads once
        tensors = dec.decode()                     # {name: torch.Tensor on the GPU, logical dtype}

`exponent` frames (BF16, DFloat11 layout) are decoded by the CUDA kernel
``kernels/exponent_decode.cu``, compiled at run time with ``cupy.RawModule``: one launch for all
tensors of the block, into one reusable output buffer. Frames of other codecs are decoded once
on the host when the decoder is built and copied into the buffer at each decode.

Importing this package never imports CuPy or torch. Using the GPU without CuPy or a device
raises :class:`codec.errors.BackendUnavailableError`. Tests pass
``device=codec.gpu.cpu_runtime.CpuDevice(...)`` to run the identical kernel source on the CPU.
"""
from __future__ import annotations

import importlib.util
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailableError, FormatError

__all__ = ["available", "BlockDecoder", "decode", "BackendUnavailableError"]

_TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8",
                 "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
                 "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn",
                 "F8_E5M2": "float8_e5m2"}


def available() -> bool:
    """True when CuPy is installed and a CUDA device is usable (never raises)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        from .cupy_backend import import_cupy

        import_cupy()
        return True
    except Exception:
        return False


def _as_frames(frames) -> list[tuple[str, object]]:
    from ..formats.frame import Frame, parse_frame

    if isinstance(frames, Mapping):
        items = list(frames.items())
    else:
        items = [(None, f) for f in frames]
    out = []
    for i, (name, f) in enumerate(items):
        if isinstance(f, Frame):
            frame = f
        elif isinstance(f, (bytes, bytearray, memoryview, np.ndarray)):
            frame = parse_frame(memoryview(f).cast("B") if not isinstance(f, np.ndarray) else memoryview(f.view(np.uint8).reshape(-1)),
                                where=f"tensor {name!r}" if name else f"frame {i}")
        else:
            raise TypeError(f"expected a Frame or the bytes of one, got {type(f).__name__}")
        out.append((name if name is not None else (frame.where or f"frame {i}"), frame))
    return out


class BlockDecoder:
    """Decodes a fixed set of frames (e.g. one transformer block) with one kernel launch.

    frames: a sequence of frames (``codec.formats.frame.Frame`` or frame bytes) or a mapping
    name -> frame. device: None for the current CUDA device through CuPy, or a device object
    with the same interface (``cpu_runtime.CpuDevice`` in tests). The compressed bytes and launch
    tables are uploaded once here; :meth:`decode` can run any number of times.
    """

    def __init__(self, frames, device=None) -> None:
        from . import exponent

        if device is None:
            from .cupy_backend import CupyDevice

            device = CupyDevice()
        self.device = device
        entries = _as_frames(frames)
        self.plans, self.slots, self.nbytes = exponent.build_plans(entries)
        self.launchers = [exponent.ExponentLauncher(p, device) for p in self.plans]
        self._host_parts = [(s, device.asarray(s.host_decoded)) for s in self.slots if s.host_decoded is not None]

    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def decode_raw(self, out=None):
        """Decode into `out` (device uint8 buffer of at least `nbytes`, allocated if None); return it."""
        d = self.device
        if out is None:
            out = d.empty(max(self.nbytes, 2), np.uint8)
        else:
            out = self._adopt(out)
        if out.dtype != np.uint8 or out.ndim != 1 or out.size < self.nbytes:
            raise ValueError(f"out must be a flat uint8 buffer of at least {self.nbytes} bytes")
        for slot, part in self._host_parts:
            out[slot.byte_offset:slot.byte_offset + slot.nbytes] = part
        u16 = out[:out.size // 2 * 2].view(np.uint16)
        for lau in self.launchers:
            lau.run(u16)
        for lau in self.launchers:
            lau.check()
        return out

    def _adopt(self, out):
        if isinstance(out, np.ndarray):
            return out
        if getattr(self.device, "name", "") == "cuda":
            from .cupy_backend import as_device_array

            arr = as_device_array(out, self.device.cp)
            return arr.reshape(-1).view(np.uint8)
        try:   # a torch CPU tensor for the CPU runtime
            return out.numpy().reshape(-1).view(np.uint8)
        except AttributeError:
            raise TypeError(f"unsupported output buffer type {type(out).__name__}") from None

    def decode(self, out=None) -> dict:
        """Decode every tensor; return {name: torch tensor of its logical dtype and shape}.

        The tensors are views of one output buffer (`out`, or a new one): on a GPU torch CUDA
        tensors sharing CuPy's memory through DLPack, on the CPU runtime torch CPU tensors.
        """
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("codec.gpu.BlockDecoder.decode returns torch tensors: "
                                          "pip install torch (or use decode_raw)") from exc
        buf = self.decode_raw(out)
        if getattr(self.device, "name", "") == "cuda":
            tbuf = torch.from_dlpack(buf)
        else:
            tbuf = torch.from_numpy(np.asarray(buf))
        result = {}
        for s in self.slots:
            tdt = getattr(torch, _TORCH_DTYPES.get(s.dtype, "uint8"), None)
            if tdt is None:
                raise FormatError(f"tensor {s.name!r}: dtype {s.dtype} has no torch equivalent")
            piece = tbuf[s.byte_offset:s.byte_offset + s.nbytes]
            result[s.name] = piece.view(tdt).reshape(s.shape) if s.nbytes else torch.empty(s.shape, dtype=tdt)
        return result


def decode(frames, out=None, device=None) -> dict:
    """One-shot: ``BlockDecoder(frames, device).decode(out)``."""
    return BlockDecoder(frames, device).decode(out)
