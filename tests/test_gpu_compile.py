"""The kernels compile for real GPUs: nvcc for sm_80/86/89/90 (and NVRTC, CuPy's compiler, when
CuPy is installed); sources stay NVRTC-portable; importing codec.gpu never imports CuPy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codec.gpu import compile_check as cc
from codec.gpu import exponent as ge

KERNELS = sorted((Path(ge.__file__).parent / "kernels").glob("*.cu"))
TEST_KERNELS = sorted((Path(__file__).parent / "kernels").glob("*.cu"))
DEFINES = {"exponent_decode.cu": {"LUT_BITS": ge.LUT_BITS}}


@pytest.mark.parametrize("path", KERNELS + TEST_KERNELS, ids=lambda p: p.name)
def test_sources_are_nvrtc_portable(path):
    assert cc.nvrtc_portability_problems(path.read_text()) == []


@pytest.mark.skipif(cc.find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_nvcc_compiles_for_every_arch(path):
    res = cc.nvcc_compile(path.read_text(), cc.ARCHS, DEFINES.get(path.name), path.name)
    assert sorted(r.arch for r in res) == sorted(cc.ARCHS)
    for r in res:
        assert r.spill_stores == 0 and r.spill_loads == 0, r
        assert r.registers <= 64, r            # __launch_bounds__(1024): 64K registers / 1024 threads
        assert r.shared_bytes <= 1024, r       # the tables and staging are dynamic shared memory


@pytest.mark.skipif(cc.find_nvcc() is None, reason="nvcc not installed")
def test_nvcc_reports_errors():
    with pytest.raises(cc.CompileCheckError, match="error"):
        cc.nvcc_compile(ge.kernel_source().replace("u32 count = 0;", "u32 count = ;"), ("90",))


@pytest.mark.skipif(not cc.nvrtc_available(), reason="CuPy's NVRTC not installed")
@pytest.mark.parametrize("arch", cc.ARCHS)
def test_nvrtc_compiles(arch):
    cubin = cc.nvrtc_compile(ge.kernel_source(), arch, {"LUT_BITS": ge.LUT_BITS}, "exponent_decode.cu")
    assert cubin[:4] == b"\x7fELF"


def test_import_is_lazy_and_use_without_cupy_is_clean():
    code = ("import sys, codec, codec.gpu, codec.gpu.exponent\n"
            "assert 'cupy' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "ok = codec.gpu.available()\n"
            "assert isinstance(ok, bool)\n"
            "if not ok:\n"
            "    from codec.errors import BackendUnavailableError\n"
            "    try:\n"
            "        codec.gpu.BlockDecoder([])\n"
            "    except BackendUnavailableError as e:\n"
            "        assert isinstance(e, ImportError)\n"
            "    else:\n"
            "        raise SystemExit('no BackendUnavailableError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
