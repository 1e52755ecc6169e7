"""Planted bugs in the real exponent kernel must make the kernel tests fail.

Each mutant deletes one __syncthreads() or plants an off-by-one (in the block scan, in the
copy-out bound). A mutant is caught when, under at least one of the schedules, the decode of
real BF16 weights raises (FormatError from a block status, or a KernelLaunchError from a guard
page) or returns different bits. The unmutated kernel passes under all schedules.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from codec import datasets
from codec.errors import FormatError
from codec.gpu import exponent as ge
from codec.gpu.cpu_runtime import CpuDevice, KernelLaunchError, precompile

from gpu_frames import make_frame

SRC = ge.kernel_source()
SCHEDULES = ["forward", "reverse", "random:11"]
BARRIERS = [m.start() for m in re.finditer(r"__syncthreads\(\);", SRC)]


def _mutants() -> dict[str, str]:
    out = {}
    for i, pos in enumerate(BARRIERS):
        out[f"no_barrier_{i + 1}"] = SRC[:pos] + SRC[pos + len("__syncthreads();"):]
    swaps = {
        "scan_inclusive": ("for (u32 i = t & ~31u; i < t; ++i)", "for (u32 i = t & ~31u; i <= t; ++i)"),
        "scan_warp_sum_short": ("for (u32 i = 32u * t; i < end; ++i)", "for (u32 i = 32u * t + 1u; i < end; ++i)"),
        "copy_out_bound": ("for (u32 i = t; i < bd.out_count; i += nt) dst[i] = s_stage[i];",
                           "for (u32 i = t; i <= bd.out_count; i += nt) dst[i] = s_stage[i];"),
    }
    for name, (a, b) in swaps.items():
        assert SRC.count(a) == 1, name
        out[name] = SRC.replace(a, b)
    return out


MUTANTS = _mutants()
DEFINES = {"LUT_BITS": ge.LUT_BITS}


@pytest.fixture(scope="module")
def setup():
    precompile([(src, DEFINES, "exponent_decode.cu") for src in [SRC, *MUTANTS.values()]])
    tensors = datasets.minilm_tensors("BF16")
    names = ["encoder.layer.1.attention.output.dense.bias", "encoder.layer.1.intermediate.dense.bias",
             "encoder.layer.1.output.LayerNorm.weight"]
    raw = {n: tensors[n][2] for n in names}
    frames = {n: make_frame(raw[n], tensors[n][1], chunk_size=1 << 16) for n in names}
    plans, slots, nbytes = ge.build_plans(list(frames.items()))
    expected = np.zeros(nbytes, np.uint8)
    for s in slots:
        expected[s.byte_offset:s.byte_offset + s.nbytes] = raw[s.name]
    return plans[0], nbytes, expected


def run(src: str, plan, nbytes: int, expected: np.ndarray, schedule: str) -> str:
    dev = CpuDevice(schedule=schedule, timeout=20)
    lau = ge.ExponentLauncher(plan, dev)
    lau.kernel = dev.kernel(src, "exponent_decode", DEFINES, "exponent_decode.cu")
    out = dev.zeros(nbytes // 2, np.uint16)
    try:
        lau.run(out)
        lau.check()
    except (FormatError, KernelLaunchError) as exc:
        return f"caught: {type(exc).__name__}"
    return "ok" if out.view(np.uint8).tobytes() == expected.tobytes() else "caught: wrong output"


def test_the_kernel_has_the_barriers_we_mutate():
    assert len(BARRIERS) == 5


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_unmutated_kernel_passes(setup, schedule):
    assert run(SRC, *setup, schedule) == "ok"


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(setup, name):
    results = {s: run(MUTANTS[name], *setup, s) for s in SCHEDULES}
    assert any(r != "ok" for r in results.values()), f"{name} not caught: {results}"
