"""Compile the kernel sources for real GPU architectures without a GPU.

Two compilers can check a kernel here:

* ``nvcc`` from a CUDA toolkit (``nvcc -cubin -arch=sm_XX``), which also reports registers,
  shared memory and spills per kernel through ``-Xptxas -v``;
* NVRTC, the run-time compiler ``cupy.RawModule`` uses, through CuPy's low-level
  ``cupy.cuda.nvrtc`` wrappers (``RawModule.compile()`` wants a device; these calls do not).

NVRTC has no C/C++ standard headers. The project's kernels therefore include nothing and
declare their own integer types; :func:`nvrtc_portability_problems` checks that statically, so
the nvcc check (which does see the standard headers) also vouches for NVRTC.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cpu_runtime import defines_to_flags

ARCHS = ("80", "86", "89", "90")
CUPY_OPTIONS = ("--std=c++17",)


class CompileCheckError(RuntimeError):
    """The CUDA compiler rejected a kernel source."""


@dataclass
class KernelResources:
    arch: str
    kernel: str
    registers: int
    shared_bytes: int          # static shared memory
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    barriers: int


def find_nvcc() -> str | None:
    p = shutil.which("nvcc")
    if p:
        return p
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


def nvrtc_portability_problems(src: str) -> list[str]:
    """Reasons the source would not compile under NVRTC (which has no standard headers)."""
    problems = []
    guarded = 0
    for n, line in enumerate(src.splitlines(), 1):
        s = line.strip()
        if s.startswith("#if") and "__CUDACC_RTC__" in s:
            guarded += 1
        elif s.startswith("#endif") and guarded:
            guarded -= 1
        elif re.match(r"#\s*include\s*<", s) and not guarded:
            problems.append(f"line {n}: {s} (NVRTC has no system headers; guard it with __CUDACC_RTC__)")
    return problems


_PTXAS_FN = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _parse_ptxas(log: str) -> list[KernelResources]:
    out: list[KernelResources] = []
    cur: tuple[str, str] | None = None
    stack = (0, 0, 0)
    for line in log.splitlines():
        if m := _PTXAS_FN.search(line):
            cur = (m.group(1), m.group(2))
            stack = (0, 0, 0)
        elif (m := _PTXAS_STACK.search(line)) and cur:
            stack = tuple(int(x) for x in m.groups())
        elif (m := _PTXAS_USED.search(line)) and cur:
            out.append(KernelResources(arch=cur[1], kernel=cur[0], registers=int(m.group(1)),
                                       barriers=int(m.group(2) or 0), shared_bytes=int(m.group(3) or 0),
                                       stack_bytes=stack[0], spill_stores=stack[1], spill_loads=stack[2]))
            cur = None
    return out


def nvcc_compile(src: str, archs=ARCHS, defines: dict | None = None, filename: str = "kernel.cu",
                 extra: tuple[str, ...] = ()) -> list[KernelResources]:
    """Compile `src` to SASS for every arch in one nvcc run; return ptxas' resource report."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (install a CUDA toolkit or set CUDA_HOME)")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / Path(filename).name
        cu.write_text(src)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        cmd = [nvcc, "-fatbin", *CUPY_OPTIONS, "-Xptxas", "-v", "-Werror", "all-warnings", *gencode,
               *defines_to_flags(defines), *extra, "-o", str(Path(tmp) / "k.fatbin"), str(cu)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        log = r.stdout + r.stderr
        if r.returncode != 0:
            raise CompileCheckError(f"{filename}: nvcc failed (exit {r.returncode}):\n{log.strip()}")
    return _parse_ptxas(log)


def _nvrtc():
    """CuPy's low-level NVRTC bindings (their module moved between CuPy releases)."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # CuPy >= 13
    except ImportError:
        from cupy.cuda import nvrtc  # older CuPy
    return nvrtc


def nvrtc_available() -> bool:
    try:
        _nvrtc().getVersion()
        return True
    except Exception:
        return False


def nvrtc_compile(src: str, arch: str, defines: dict | None = None, filename: str = "kernel.cu") -> bytes:
    """Compile with NVRTC exactly as cupy.RawModule would, returning the cubin."""
    nvrtc = _nvrtc()

    opts = [f"-arch=sm_{arch}", *CUPY_OPTIONS, *defines_to_flags(defines)]
    prog = nvrtc.createProgram(src, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as exc:
            raise CompileCheckError(f"{filename}: NVRTC failed for sm_{arch}: {exc}\n"
                                    f"{nvrtc.getProgramLog(prog)}") from None
        cubin = nvrtc.getCUBIN(prog)
        return cubin.encode("latin-1") if isinstance(cubin, str) else bytes(cubin)
    finally:
        nvrtc.destroyProgram(prog)
