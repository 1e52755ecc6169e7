"""The `codec` command line, run as a user would (in-process for speed, plus one real subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from codec.cli import main
from conftest import sha256


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_decompress_verify_inspect(small_safetensors, tmp_path, capsys):
    before = sha256(small_safetensors)
    code, out, err = run(capsys, "compress", small_safetensors)
    assert code == 0 and "ratio" in out and "MB/s" in out
    nnc = tmp_path / "small.safetensors.nnc"
    assert nnc.exists()
    code, out, _ = run(capsys, "compress", small_safetensors)
    assert code == 1  # exists, no --force
    code, out, _ = run(capsys, "compress", "-f", small_safetensors, "--codec", "zstd", "--level", "19")
    assert code == 0
    code, out, _ = run(capsys, "verify", nnc)
    assert code == 0 and "OK" in out
    code, out, _ = run(capsys, "inspect", nnc)
    assert code == 0 and "format 1.0" in out and "zstd(level=19)" in out and "entropy" in out
    code, out, _ = run(capsys, "inspect", "--json", nnc)
    info = json.loads(out)
    assert {t["name"] for t in info["tensors"]} == {"<header>", "w", "b", "ids"}
    assert all("streams" in t for t in info["tensors"])
    small_safetensors.rename(tmp_path / "orig.safetensors")
    code, out, _ = run(capsys, "decompress", nnc)
    assert code == 0
    assert sha256(small_safetensors) == before
    # sizes read in the direction of the work: compressed -> restored
    from codec.api import human_size
    sizes = f"{human_size(nnc.stat().st_size)} -> {human_size(small_safetensors.stat().st_size)} (from ratio"
    assert sizes in out, out
    code, out, _ = run(capsys, "decompress", nnc, "-o", tmp_path / "again.safetensors", "--json")
    assert code == 0 and json.loads(out)[0]["original_size"] == small_safetensors.stat().st_size


def test_verify_reports_corruption(small_safetensors, tmp_path, capsys):
    nnc = tmp_path / "c.nnc"
    assert run(capsys, "compress", small_safetensors, "-o", nnc)[0] == 0
    data = bytearray(nnc.read_bytes())
    data[len(data) // 2] ^= 0x10
    nnc.write_bytes(data)
    code, out, err = run(capsys, "verify", nnc)
    assert code == 1 and "FAILED" in err and "Traceback" not in err
    code, out, err = run(capsys, "decompress", nnc, "-o", tmp_path / "x")
    assert code == 1 and err.startswith("codec: error:") and not (tmp_path / "x").exists()


def test_usage_errors_and_codecs(small_safetensors, capsys):
    assert run(capsys, "compress", small_safetensors, "--codec", "nope")[0] == 2
    code, out, _ = run(capsys, "codecs")
    assert code == 0 and "zstd" in out and "raw" in out
    code, out, _ = run(capsys, "codecs", "--json")
    assert {"zstd", "raw"} <= {r["id"] for r in json.loads(out)}
    assert run(capsys)[0] == 2
    assert run(capsys, "decompress", "/nonexistent.nnc")[0] == 1


def test_console_script_subprocess(small_safetensors, tmp_path):
    """The installed entry point: no traceback on errors, exit codes as documented."""
    r = subprocess.run([sys.executable, "-m", "codec.cli", "verify", str(small_safetensors)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a .nnc file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "codec.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("codec ")


def test_demo_runs(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--dir", tmp_path, "-q")
    assert code == 0 and "sha256 of restored file matches" in out
