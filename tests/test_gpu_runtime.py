"""The CPU runtime that executes CUDA kernel sources with CUDA semantics (codec.gpu.cpu_runtime).

A small block-scan kernel (tests/kernels/block_scan.cu) is run under every schedule and both
execution modes; planted bugs (missing barriers, off-by-one bounds, divergent barriers, endless
loops, too much shared memory, wrong argument types) must each be reported, never pass silently
and never take the test process down.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codec.gpu import cpu_runtime as cr
from codec.gpu.cpu_runtime import CpuDevice, KernelCompileError, KernelLaunchError

SCAN_SRC = (Path(__file__).parent / "kernels" / "block_scan.cu").read_text()
THREADS = 128
N = 20 * THREADS + 37            # a partial last block
SCHEDULES = ["forward", "reverse", "random:7"]


def mutate(src: str, old: str, new: str) -> str:
    assert src.count(old) == 1, old
    return src.replace(old, new)


MUTANTS = {
    # the write of the next buffer races with other threads' reads of the current one
    "no_barrier_in_scan_loop": ("        __syncthreads();\n        u32* tmp", "        u32* tmp"),
    # thread 0 reads `total` before the last thread has written it
    "no_barrier_after_total": ("total = cur[t];\n    __syncthreads();", "total = cur[t];"),
    # off-by-one in the scan: thread `off` misses its neighbour at distance `off`
    "scan_off_by_one": ("t >= off ? cur[t - off]", "t > off ? cur[t - off]"),
    # off-by-one bound on the store: the last block writes one element past `out`
    "store_bound_off_by_one": ("if (i < n) out[i]", "if (i <= n) out[i]"),
    # reads in[-1] in block 0
    "load_before_start": ("cur[t] = i < n ? in[i] : 0u;", "cur[t] = i < n ? in[(int)i - 1 + (i != 0)] : 0u;"),
}


@pytest.fixture(scope="module", autouse=True)
def _precompile():
    """Compile the kernel and its mutants once, in parallel (g++ dominates this file's time)."""
    srcs = [(SCAN_SRC, None, "block_scan.cu")] + [
        (mutate(SCAN_SRC, *MUTANTS[m]), None, "block_scan.cu") for m in MUTANTS]
    cr.precompile(srcs)
    cr.precompile([(SCAN_SRC, None, "block_scan.cu")], mode="threads")


def reference(x: np.ndarray, threads: int = THREADS):
    out = np.concatenate([np.cumsum(x[j:j + threads], dtype=np.uint32) for j in range(0, x.size, threads)])
    sums = np.array([x[j:j + threads].sum(dtype=np.uint32) for j in range(0, x.size, threads)], np.uint32)
    return out, sums


def run_scan(dev: CpuDevice, src: str = SCAN_SRC, n: int = N, threads: int = THREADS, smem: int | None = None,
             grid: int | None = None):
    x = np.random.default_rng(n).integers(0, 1000, n).astype(np.uint32)
    blocks = -(-n // threads)
    k = dev.kernel(src, "block_scan", filename="block_scan.cu")
    d_in, d_out, d_sums = dev.asarray(x), dev.zeros(n, np.uint32), dev.zeros(blocks, np.uint32)
    k((grid or blocks,), (threads,), (d_in, d_out, d_sums, np.uint32(n)),
      shared_mem=2 * threads * 4 if smem is None else smem)
    out, sums = reference(x, threads)
    return bool(np.array_equal(d_out, out) and np.array_equal(d_sums, sums))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_scan_is_correct_under_every_schedule(schedule):
    assert run_scan(CpuDevice(schedule=schedule))


@pytest.mark.parametrize("threads", [1, 32, 1024])
def test_block_sizes(threads):
    assert run_scan(CpuDevice(schedule="reverse"), n=3 * threads - 1, threads=threads)


def test_thread_mode_and_in_process_launch():
    assert run_scan(CpuDevice(mode="threads"))
    assert run_scan(CpuDevice(schedule="random:3", isolate=False))


@pytest.mark.parametrize("name", ["no_barrier_in_scan_loop", "no_barrier_after_total", "scan_off_by_one"])
def test_planted_race_or_scan_bug_gives_a_wrong_result(name):
    src = mutate(SCAN_SRC, *MUTANTS[name])
    results = {s: run_scan(CpuDevice(schedule=s), src) for s in SCHEDULES}
    assert not all(results.values()), f"{name} was not caught by any schedule: {results}"


def test_schedules_differ_on_a_missing_barrier():
    """The forward order runs thread 0 before the writer of `total`: only some schedules see it."""
    src = mutate(SCAN_SRC, *MUTANTS["no_barrier_after_total"])
    assert not run_scan(CpuDevice(schedule="forward"), src)
    assert run_scan(CpuDevice(schedule="reverse"), src)    # why one schedule is never enough


def test_out_of_bounds_store_hits_the_guard_page():
    src = mutate(SCAN_SRC, *MUTANTS["store_bound_off_by_one"])
    with pytest.raises(KernelLaunchError, match=r"past the end .* of argument 'out'") as e:
        run_scan(CpuDevice(), src)
    assert e.value.kind == "fault" and e.value.argument == "out"
    assert e.value.block == (N // THREADS, 0, 0) and e.value.thread == (N % THREADS, 0, 0)


def test_out_of_bounds_load_before_start():
    src = mutate(SCAN_SRC, *MUTANTS["load_before_start"])
    with pytest.raises(KernelLaunchError, match=r"bytes before the start of argument 'in'"):
        run_scan(CpuDevice(align="start"), src)


def test_dynamic_shared_memory_overrun():
    with pytest.raises(KernelLaunchError, match="dynamic shared memory"):
        run_scan(CpuDevice(), smem=THREADS * 4)     # half of what the kernel uses


def test_shared_memory_limit_is_enforced():
    with pytest.raises(KernelLaunchError, match="too much shared memory"):
        run_scan(CpuDevice(), smem=48 * 1024)       # plus 4 static bytes: over 48 KiB
    assert run_scan(CpuDevice(smem_limit=64 * 1024), smem=48 * 1024)


def test_divergent_barrier_is_reported():
    src = mutate(SCAN_SRC, "    if (i < n) out[i] = cur[t];", "    if (t == 5) return;\n    __syncthreads();\n"
                 "    if (i < n) out[i] = cur[t];")
    with pytest.raises(KernelLaunchError, match=r"not reached by every thread.*kernel line 2[0-9]") as e:
        run_scan(CpuDevice(), src)
    assert e.value.kind == "barrier"


def test_endless_loop_times_out():
    src = mutate(SCAN_SRC, "    extern __shared__", "    while (*(volatile const u32*)in != 12345u) {}\n"
                 "    extern __shared__")
    with pytest.raises(KernelLaunchError, match="still running") as e:
        run_scan(CpuDevice(timeout=1.0), src)
    assert e.value.kind == "timeout"


def test_trap_and_null_pointer_do_not_kill_the_process():
    trap = mutate(SCAN_SRC, "    __syncthreads();\n    if (i < n) out[i]", "    __syncthreads();\n"
                  "    if (t == 3) __trap();\n    if (i < n) out[i]")
    with pytest.raises(KernelLaunchError, match=r"__trap\(\)") as e:
        run_scan(CpuDevice(), trap)
    assert e.value.thread == (3, 0, 0)
    null = mutate(SCAN_SRC, "if (t == 0) sums[blockIdx.x] = total;",
                  "if (t == 0) sums[blockIdx.x] = total; if (blockIdx.x == 2) *(volatile u32*)(sums - sums) = 1;")
    with pytest.raises(KernelLaunchError, match=r"SIGSEGV.*in no argument's buffer") as e:
        run_scan(CpuDevice(), null)
    assert e.value.block == (2, 0, 0)


def test_invalid_launch_configuration():
    with pytest.raises(KernelLaunchError, match="invalid launch configuration"):
        run_scan(CpuDevice(), threads=2048)


def test_arguments_are_checked_like_a_gpu_would_need():
    dev = CpuDevice()
    k = dev.kernel(SCAN_SRC, "block_scan", filename="block_scan.cu")
    a, o, s = dev.zeros(8, np.uint32), dev.zeros(8, np.uint32), dev.zeros(1, np.uint32)
    assert k.signature == ["P4", "p4", "p4", "u4"] and k.params == ["in", "out", "sums", "n"]
    with pytest.raises(TypeError, match="CuPy passes Python ints as int64"):
        k((1,), (8,), (a, o, s, 8))
    with pytest.raises(TypeError, match="got numpy int32"):
        k((1,), (8,), (a, o, s, np.int32(8)))
    with pytest.raises(TypeError, match="host memory"):
        k((1,), (8,), (np.zeros(8, np.uint32), o, s, np.uint32(8)))
    with pytest.raises(ValueError, match="not 4-byte aligned"):
        k((1,), (8,), (dev.zeros(40, np.uint8)[1:33].view(np.uint8), o, s, np.uint32(8)))
    with pytest.raises(TypeError, match="takes 4 arguments"):
        k((1,), (8,), (a, o, s))


def test_compile_error_is_reported_with_the_source_line():
    with pytest.raises(KernelCompileError, match=r"block_scan.cu:2[01]:[0-9]+: error"):
        CpuDevice().kernel(SCAN_SRC.replace("u32* tmp = cur;", "u32* tmp = cur"), "block_scan",
                           filename="block_scan.cu")


def test_library_cache_is_reused(tmp_path):
    lib1, path1 = cr.compile_library(SCAN_SRC, filename="block_scan.cu")
    lib2, path2 = cr.compile_library(SCAN_SRC, filename="block_scan.cu")
    assert lib1 is lib2 and path1 == path2 and path1.exists()
    _, path3 = cr.compile_library(SCAN_SRC, filename="block_scan.cu", defines={"UNUSED_FLAG": 1})
    assert path3 != path1                                   # defines are part of the key
