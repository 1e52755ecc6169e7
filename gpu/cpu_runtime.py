"""Run the project's CUDA kernel sources on the CPU, with CUDA semantics, for tests.

The unmodified ``kernels/*.cu`` source is compiled by g++ as C++20 with ``kernels/cuda_cpu.h``
force-included (see that header for the execution model: every CUDA block's threads run as
fibers that switch at ``__syncthreads()`` under a forward, reverse or seeded random schedule,
or as real OS threads). The shared library is cached on disk, keyed by the source, the header,
the defines and the compiler, and loaded with ctypes.

Kernels are launched with CuPy's call convention, ``kernel(grid, block, args, shared_mem=0)``,
on arrays allocated by :class:`CpuDevice` (``empty``/``zeros``/``asarray``/``asnumpy``, the
subset of CuPy the host code uses). Every such array lies between two ``PROT_NONE`` guard pages,
ending right at the upper one (or starting right after the lower one), so an access past either
end faults. By default each launch runs *isolated*, in a forked child that shares the device
arrays (``MAP_SHARED``): a fault, an abort or a hang (timeout) in kernel code becomes a
:class:`KernelLaunchError` in the caller naming the block, the thread and the argument whose
guard page was hit, and never kills the test process.

The runtime is strict where a GPU would fail silently: kernel parameters are checked against
the compiled signature (a Python ``int`` for a 4-byte parameter, a float64 for a float, a
misaligned pointer, a host array that is not device memory are all rejected), shared memory
above 48 KiB per block fails the launch, and a ``__syncthreads()`` that not every thread reaches
is an error.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
HEADER = KERNEL_DIR / "cuda_cpu.h"

SCHEDULES = ("forward", "reverse", "random")
MODES = ("fibers", "threads")
DEFAULT_SMEM_LIMIT = 48 * 1024
PAGE = mmap.PAGESIZE


class CpuRuntimeError(RuntimeError):
    """Base class of the CPU runtime's errors (these are test-infrastructure errors)."""


class KernelCompileError(CpuRuntimeError):
    """g++ rejected the kernel source; the message carries the compiler's diagnostics."""


class KernelLaunchError(CpuRuntimeError):
    """A launch failed: bad configuration, barrier misuse, a fault, a trap or a timeout."""

    def __init__(self, message: str, *, kind: str = "launch", block=None, thread=None,
                 address: int | None = None, argument: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind          # launch | barrier | trap | fault | timeout | crash
        self.block = block
        self.thread = thread
        self.address = address
        self.argument = argument


# ---------------------------------------------------------------------------------------------
# ctypes mirror of the structures in cuda_cpu.h
# ---------------------------------------------------------------------------------------------
class _Options(ctypes.Structure):
    _fields_ = [("schedule", ctypes.c_int32), ("seed", ctypes.c_uint32), ("smem_limit", ctypes.c_uint64),
                ("poison", ctypes.c_int32), ("isolated", ctypes.c_int32), ("stack_bytes", ctypes.c_uint64)]


class _Report(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int32), ("signal", ctypes.c_int32), ("address", ctypes.c_uint64),
                ("block", ctypes.c_uint32 * 3), ("thread", ctypes.c_uint32 * 3), ("line", ctypes.c_int32),
                ("have_thread", ctypes.c_int32), ("smem_begin", ctypes.c_uint64), ("smem_end", ctypes.c_uint64),
                ("message", ctypes.c_char * 432)]


_CODE_KIND = {1: "launch", 2: "barrier", 3: "trap", 4: "fault", 5: "launch"}
_EXIT_FAULT, _EXIT_TRAP = 70, 71

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


# ---------------------------------------------------------------------------------------------
# guarded, fork-shared device memory
# ---------------------------------------------------------------------------------------------
class _Allocation:
    """Bookkeeping of one device buffer: [guard page][... data ...][guard page], MAP_SHARED.

    Holds only addresses; the mapping lives as long as the arrays that view it, and a
    finalizer on the mapping drops this record.
    """

    def __init__(self, base: int, body: int, offset: int, nbytes: int) -> None:
        self.base, self.body, self.offset, self.nbytes = base, body, offset, nbytes
        self.start = base + offset
        self.end = self.start + nbytes

    def describe(self, addr: int) -> str | None:
        lo_guard, hi_guard = self.base, self.base + PAGE + self.body
        if lo_guard <= addr < lo_guard + PAGE:
            return f"{self.start - addr} bytes before the start"
        if hi_guard <= addr < hi_guard + PAGE:
            return f"{addr - self.end} bytes past the end (it has {self.nbytes} bytes)"
        if self.start <= addr < self.end:
            return f"inside, at byte {addr - self.start}"
        if self.base <= addr < hi_guard + PAGE:
            return f"{addr - self.start} bytes from the start (padding before a guard page)"
        return None


_live: dict[int, _Allocation] = {}


def _owner(addr: int) -> _Allocation | None:
    for a in list(_live.values()):
        if a.base <= addr < a.base + a.body + 2 * PAGE:
            return a
    return None


def guarded_empty(shape, dtype, align: str = "end") -> np.ndarray:
    """An uninitialised array in guarded, fork-shared memory (the CPU runtime's device memory)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(x) for x in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = max(-(-nbytes // PAGE), 1) * PAGE
    m = mmap.mmap(-1, body + 2 * PAGE)                  # anonymous and MAP_SHARED: forks see writes
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for lo in (base, base + PAGE + body):
        if _libc.mprotect(ctypes.c_void_p(lo), PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
    # "end": the last byte touches the upper guard page; "start": the first touches the lower
    offset = PAGE + (body - nbytes if align == "end" else 0)
    offset -= offset % dtype.alignment
    _live[base] = _Allocation(base, body, offset, nbytes)
    weakref.finalize(m, _live.pop, base, None)
    return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=offset).view(dtype).reshape(shape)


def is_device_array(a) -> bool:
    return isinstance(a, np.ndarray) and _owner(a.ctypes.data) is not None


# ---------------------------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("CODEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "codec")
    return Path(root) / "cuda_cpu"


_DYN_SHARED = re.compile(
    r"extern\s+__shared__\s+((?:(?:__align__|alignas)\s*\(\s*\d+\s*\)\s*)?)([A-Za-z_][\w:\s]*?)\s*\b(\w+)\s*\[\s*\]\s*;")


def _rewrite_dynamic_shared(src: str) -> str:
    """``extern __shared__ T name[];`` -> ``T* const name = (T*)::cucpu::dynamic_smem();``.

    C++ has no spelling for an unsized shared array, so this is the one textual rewrite; it
    keeps the line count, so diagnostics and barrier line numbers match the .cu file.
    """
    return _DYN_SHARED.sub(lambda m: f"{m.group(2)}* const {m.group(3)} = ({m.group(2)}*)::cucpu::dynamic_smem();",
                           src)


_LB = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
_KERNEL_NAMES = re.compile(r'extern\s+"C"\s+__global__\s+' + _LB + r"void\s+" + _LB + r"(\w+)\s*\(")


def kernel_names(src: str) -> list[str]:
    return _KERNEL_NAMES.findall(src)


def kernel_params(src: str, name: str) -> list[str]:
    """Parameter names of kernel `name`, best effort, for error messages."""
    m = re.search(r"\b" + re.escape(name) + r"\s*\(([^)]*)\)\s*\{", src)
    if not m:
        return []
    out = []
    for p in m.group(1).split(","):
        ids = re.findall(r"\w+", p)
        out.append(ids[-1] if ids else "?")
    return out


_gxx_lock = threading.Lock()
_gxx_version: str | None = None


def _compiler() -> tuple[str, str]:
    global _gxx_version
    cxx = os.environ.get("CODEC_CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelCompileError(f"the CPU kernel runtime needs a C++20 compiler; {cxx!r} was not found")
    with _gxx_lock:
        if _gxx_version is None:
            _gxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cxx, _gxx_version


def defines_to_flags(defines: dict | None) -> list[str]:
    flags = []
    for k, v in sorted((defines or {}).items()):
        if not re.fullmatch(r"[A-Za-z_]\w*", k):
            raise ValueError(f"bad macro name {k!r}")
        flags.append(f"-D{k}" if v is None else f"-D{k}={v}")
    return flags


_loaded: dict[str, ctypes.CDLL] = {}


def compile_library(src: str, *, defines: dict | None = None, mode: str = "fibers", filename: str = "kernel.cu",
                    opt: str = "-O2", extra_flags: Sequence[str] = ()) -> tuple[ctypes.CDLL, Path]:
    """Compile `src` against cuda_cpu.h into a cached shared library and load it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = kernel_names(src)
    if not names:
        raise KernelCompileError(f'{filename}: no `extern "C" __global__ void name(...)` kernel found')
    cxx, version = _compiler()
    flags = ["-std=c++20", opt, "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing",
             "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0",    # fibers switch stacks with _longjmp
             "-Wall", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
             f"-DCUCPU_THREADS={1 if mode == 'threads' else 0}", "-I", str(KERNEL_DIR),
             "-include", str(HEADER), *defines_to_flags(defines), *extra_flags]
    text = (f'#line 1 "{filename}"\n' + _rewrite_dynamic_shared(src) + "\n"
            + "".join(f"CUCPU_EXPORT({n})\n" for n in names))
    key = hashlib.sha256("\0".join([text, HEADER.read_text(), " ".join(flags), version]).encode()).hexdigest()[:24]
    if key in _loaded:
        return _loaded[key], cache_dir() / f"{key}.so"
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    so = d / f"{key}.so"
    if not so.exists():
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            cu = Path(tmp) / Path(filename).name
            cu.write_text(text)
            out = Path(tmp) / "k.so"
            cmd = [cxx, *flags, "-x", "c++", str(cu), "-o", str(out)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise KernelCompileError(f"{filename}: g++ failed (exit {r.returncode}):\n{r.stderr.strip()}")
            log.debug("compiled %s (%s) in %.2fs", filename, mode, time.perf_counter() - t0)
            os.replace(out, so)
    lib = ctypes.CDLL(str(so))
    _loaded[key] = lib
    return lib, so


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
_SCALAR = {"i1": ctypes.c_int8, "i2": ctypes.c_int16, "i4": ctypes.c_int32, "i8": ctypes.c_int64,
           "u1": ctypes.c_uint8, "u2": ctypes.c_uint16, "u4": ctypes.c_uint32, "u8": ctypes.c_uint64,
           "f4": ctypes.c_float, "f8": ctypes.c_double, "b1": ctypes.c_bool}
_ALIGN = {"1": 1, "2": 2, "4": 4, "8": 8, "G": 16}


def _dims(v, what: str) -> tuple[int, int, int]:
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(x, (int, np.integer)) for x in t):
        raise TypeError(f"{what} must be an int or a tuple of 1-3 ints, got {v!r}")
    t = tuple(int(x) for x in t) + (1,) * (3 - len(t))
    if any(x < 0 or x >= 1 << 32 for x in t):
        raise ValueError(f"{what} {v!r} out of range")
    return t


class CpuKernel:
    """One kernel of a compiled module; call it like ``cupy.RawKernel``."""

    def __init__(self, device: "CpuDevice", lib: ctypes.CDLL, name: str, params: list[str]) -> None:
        self.device, self.name = device, name
        try:
            self._fn = getattr(lib, f"cucpu_launch_{name}")
            sig = getattr(lib, f"cucpu_signature_{name}")
        except AttributeError:
            raise CpuRuntimeError(f"kernel {name!r} is not in the module") from None
        sig.restype = ctypes.c_char_p
        self.signature = [c for c in sig().decode().split(",") if c]
        self.params = params if len(params) == len(self.signature) else [f"#{i}" for i in range(len(self.signature))]
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                             ctypes.POINTER(_Options), ctypes.POINTER(_Report)]

    def _marshal(self, args: Sequence) -> tuple[list, list[tuple[str, np.ndarray]]]:
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: takes {len(self.signature)} arguments ({', '.join(self.params)}), "
                            f"got {len(args)}")
        values, arrays = [], []
        for a, code, pname in zip(args, self.signature, self.params):
            where = f"{self.name}: argument {pname!r}"
            if code[0] in "pP":
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where} is a pointer; pass a device array, got {type(a).__name__}")
                if a.size and not is_device_array(a):
                    raise TypeError(f"{where}: host memory passed for a device pointer (allocate it with the "
                                    f"device's empty/zeros/asarray)")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{where}: array is not C-contiguous")
                align = _ALIGN.get(code[1], 1)
                if a.ctypes.data % align:
                    raise ValueError(f"{where}: pointer {a.ctypes.data:#x} is not {align}-byte aligned "
                                     "(a GPU fails with a misaligned address)")
                values.append(ctypes.c_void_p(a.ctypes.data))
                arrays.append((pname, a))
            elif code in _SCALAR:
                ct = _SCALAR[code]
                if isinstance(a, np.generic):
                    got = f"{a.dtype.kind}{a.dtype.itemsize}".replace("b1", "b1")
                    want = code.replace("b1", "b1")
                    if got != want:
                        raise TypeError(f"{where} has C type {code}; got numpy {a.dtype} (a GPU would read "
                                        "garbled bits)")
                    values.append(ct(a.item()))
                elif isinstance(a, bool) and code == "b1":
                    values.append(ct(a))
                elif isinstance(a, int) and not isinstance(a, bool) and code in ("i8", "u8"):
                    # CuPy passes a Python int as a 64-bit integer: correct only for 8-byte parameters
                    values.append(ct(a))
                elif isinstance(a, float) and code == "f8":
                    values.append(ct(a))
                else:
                    raise TypeError(f"{where} has C type {code}; got {type(a).__name__} {a!r:.40} (CuPy passes "
                                    "Python ints as int64 and floats as double: pass a numpy scalar of the "
                                    "exact type)")
            else:
                raise TypeError(f"{where}: unsupported parameter type code {code!r}")
        return values, arrays

    def __call__(self, grid, block, args, shared_mem: int = 0, **kw) -> None:
        if kw:
            raise TypeError(f"unsupported launch options {sorted(kw)}")
        g, b = _dims(grid, "grid"), _dims(block, "block")
        values, arrays = self._marshal(args)
        argv = (ctypes.c_void_p * max(len(values), 1))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        dims = (ctypes.c_uint * 6)(*g, *b)
        dev = self.device
        opts = _Options(schedule=SCHEDULES.index(dev.schedule_kind), seed=dev.seed & 0xFFFFFFFF,
                        smem_limit=dev.smem_limit, poison=dev.poison, isolated=int(dev.isolate),
                        stack_bytes=dev.stack_kib * 1024)
        shared = mmap.mmap(-1, PAGE)           # the report page, shared with an isolated child
        live = _Report.from_buffer(shared)
        try:
            rc = self._run(dims, int(shared_mem), argv, opts, live)
        finally:
            rep = _Report.from_buffer_copy(live)
        dev.launches += 1
        self._raise(rc, rep, arrays, g, b)

    def _run(self, dims, smem, argv, opts, rep) -> int:
        dev = self.device
        if not dev.isolate:
            return self._fn(dims, smem, argv, ctypes.byref(opts), ctypes.byref(rep))
        pid = os.fork()
        if pid == 0:   # child: run the kernel, report through the shared page, never return
            code = 99
            try:
                code = self._fn(dims, smem, argv, ctypes.byref(opts), ctypes.byref(rep))
            finally:
                os._exit(code)
        deadline = time.monotonic() + dev.timeout
        delay = 0.0002
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise KernelLaunchError(f"{self.name}: still running after {dev.timeout:g} s (endless loop or "
                                        "a barrier that some threads never reach); killed", kind="timeout")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        if os.WIFSIGNALED(status):
            raise KernelLaunchError(f"{self.name}: launch process died from signal "
                                    f"{signal.Signals(os.WTERMSIG(status)).name}", kind="crash")
        code = os.WEXITSTATUS(status)
        if code == _EXIT_TRAP and not rep.code:
            rep.code = 3
        return rep.code if code in (_EXIT_FAULT, _EXIT_TRAP) else code

    def _raise(self, rc: int, rep: _Report, arrays, g, b) -> None:
        if rc == 0:
            return
        kind = _CODE_KIND.get(rep.code or rc, "crash")
        block = tuple(rep.block) if rep.code in (2, 3, 4) else None
        thread = tuple(rep.thread) if rep.have_thread else None
        where = ""
        if block is not None:
            where += f" in block {block}"
        if thread is not None:
            where += f" thread {thread}"
        if rep.code == 4:
            addr = int(rep.address)
            sig = signal.Signals(rep.signal).name if rep.signal else "signal"
            what, argname = f"address {addr:#x}", None
            if rep.smem_end and rep.smem_begin - PAGE <= addr < rep.smem_end + PAGE and not (
                    rep.smem_begin <= addr < rep.smem_end):
                what += " (outside the launch's dynamic shared memory)"
            else:
                owner = _owner(addr)
                names = [p for p, arr in arrays if arr.size and _owner(arr.ctypes.data) is owner]
                if owner is not None and names:
                    argname = names[0]
                    what += f": {owner.describe(addr)} of argument {argname!r}"
                elif rep.signal == signal.SIGSEGV:
                    what += " (in no argument's buffer: a wild pointer or a thread's stack overflow)"
            raise KernelLaunchError(f"{self.name}: illegal memory access ({sig}) at {what}{where}", kind="fault",
                                    block=block, thread=thread, address=addr, argument=argname)
        msg = rep.message.decode(errors="replace") or f"launch failed with code {rc}"
        line = f" (kernel line {rep.line})" if rep.line > 0 else ""
        raise KernelLaunchError(f"{self.name}: {msg}{line}{where}; grid {g}, block {b}", kind=kind,
                                block=block, thread=thread)


class CpuModule:
    def __init__(self, device: "CpuDevice", src: str, defines: dict | None, filename: str) -> None:
        self.device, self.src = device, src
        self.lib, self.path = compile_library(src, defines=defines, mode=device.mode, filename=filename,
                                              opt=device.opt)
        self._kernels: dict[str, CpuKernel] = {}

    def get_function(self, name: str) -> CpuKernel:
        if name not in self._kernels:
            self._kernels[name] = CpuKernel(self.device, self.lib, name, kernel_params(self.src, name))
        return self._kernels[name]


class CpuDevice:
    """The CPU runtime as a device: memory, modules, launch settings.

    schedule: "forward", "reverse" or "random:SEED" (fiber mode; the order in which a block's
    threads run between barriers). mode: "fibers" or "threads". isolate: run each launch in a
    forked child (faults, aborts and hangs become KernelLaunchError). align: where a buffer
    sits between its guard pages ("end": overruns fault at once; "start": underruns do).
    """

    name = "cpu"

    def __init__(self, *, schedule: str = "forward", mode: str = "fibers", isolate: bool = True,
                 timeout: float = 60.0, align: str = "end", smem_limit: int = DEFAULT_SMEM_LIMIT,
                 poison: int = 0xA5, stack_kib: int = 64, opt: str = "-O2") -> None:
        kind, _, seed = schedule.partition(":")
        if kind not in SCHEDULES or (seed and not seed.isdigit()) or (kind != "random" and seed):
            raise ValueError(f"schedule must be forward, reverse or random[:SEED], got {schedule!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if align not in ("end", "start"):
            raise ValueError("align must be 'end' or 'start'")
        self.schedule, self.schedule_kind, self.seed = schedule, kind, int(seed or 1)
        self.mode, self.isolate, self.timeout, self.align = mode, isolate, float(timeout), align
        self.smem_limit, self.poison, self.stack_kib, self.opt = int(smem_limit), int(poison), int(stack_kib), opt
        self.launches = 0
        self._modules: dict[tuple, CpuModule] = {}

    def __repr__(self) -> str:
        return f"CpuDevice(schedule={self.schedule!r}, mode={self.mode!r}, isolate={self.isolate})"

    # -- memory (the CuPy subset the host code uses) -------------------------------------------
    def empty(self, shape, dtype) -> np.ndarray:
        return guarded_empty(shape, dtype, self.align)

    def zeros(self, shape, dtype) -> np.ndarray:
        a = self.empty(shape, dtype)
        a[...] = 0
        return a

    def asarray(self, a, dtype=None) -> np.ndarray:
        src = np.ascontiguousarray(a, dtype=dtype)
        out = self.empty(src.shape, src.dtype)
        out[...] = src
        return out

    def asnumpy(self, a) -> np.ndarray:
        return np.array(a, copy=True)

    def synchronize(self) -> None:
        pass

    # -- code -------------------------------------------------------------------------------
    def module(self, src: str, defines: dict | None = None, filename: str = "kernel.cu") -> CpuModule:
        key = (src, tuple(sorted((defines or {}).items())), filename)
        if key not in self._modules:
            self._modules[key] = CpuModule(self, src, defines, filename)
        return self._modules[key]

    def kernel(self, src: str, name: str, defines: dict | None = None, filename: str = "kernel.cu") -> CpuKernel:
        return self.module(src, defines, filename).get_function(name)


def precompile(sources: Iterable[tuple[str, dict | None, str]], mode: str = "fibers", opt: str = "-O2",
               jobs: int | None = None) -> None:
    """Compile several (src, defines, filename) in parallel threads (g++ runs as subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(sources)
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as ex:
        for f in [ex.submit(compile_library, s, defines=d, mode=mode, filename=fn, opt=opt) for s, d, fn in items]:
            f.result()
