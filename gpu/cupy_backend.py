"""The CUDA device through CuPy: memory, run-time compiled kernels (cached), DLPack interop.

Imported only when a GPU decode is requested; `import codec.gpu` never imports cupy.
"""
from __future__ import annotations

from ..errors import BackendUnavailableError

NVRTC_OPTIONS = ("--std=c++17",)


def import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "GPU decoding needs CuPy: pip install 'codec[gpu]' (cupy-cuda12x)") from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise BackendUnavailableError("GPU decoding needs a CUDA device; none is visible")
    except BackendUnavailableError:
        raise
    except Exception as exc:   # no driver, CUDA_VISIBLE_DEVICES="", ...
        raise BackendUnavailableError(f"GPU decoding needs a working CUDA device: {exc}") from exc
    return cupy


class CupyDevice:
    """Same interface as cpu_runtime.CpuDevice, on a real GPU."""

    name = "cuda"

    def __init__(self, device_id: int | None = None) -> None:
        self.cp = import_cupy()
        self.device_id = self.cp.cuda.runtime.getDevice() if device_id is None else int(device_id)
        self._modules: dict[tuple, object] = {}

    def _ctx(self):
        return self.cp.cuda.Device(self.device_id)

    def empty(self, shape, dtype):
        with self._ctx():
            return self.cp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        with self._ctx():
            return self.cp.zeros(shape, dtype)

    def asarray(self, a, dtype=None):
        with self._ctx():
            return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=dtype))

    def asnumpy(self, a):
        return self.cp.asnumpy(a)

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    def kernel(self, src: str, name: str, defines: dict | None = None, filename: str = "kernel.cu"):
        key = (src, tuple(sorted((defines or {}).items())), self.device_id)
        mod = self._modules.get(key)
        if mod is None:
            opts = NVRTC_OPTIONS + tuple(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))
            with self._ctx():
                mod = self.cp.RawModule(code=src, options=opts)   # CuPy caches the cubin on disk
                mod.compile()
            self._modules[key] = mod
        return mod.get_function(name)


def as_device_array(obj, cp):
    """A CuPy view of a CuPy array, a torch CUDA tensor or anything with DLPack /
    __cuda_array_interface__ (no copy)."""
    if isinstance(obj, cp.ndarray):
        return obj
    if hasattr(obj, "__cuda_array_interface__"):
        return cp.asarray(obj)
    if hasattr(obj, "__dlpack__"):
        return cp.from_dlpack(obj)
    raise TypeError(f"expected a CuPy array or a CUDA tensor, got {type(obj).__name__}")
