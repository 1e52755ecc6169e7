"""Foundation figures: file compress/decompress throughput by worker count, and peak RSS vs file size.

    python benches/foundation.py                     # MiniLM throughput + RSS on 0.5 and 6 GiB files
    python benches/foundation.py --rss-gib 0.5 6     # choose the generated sizes
    python benches/foundation.py --no-rss            # throughput only

Peak RSS is measured in a fresh child process per run (ru_maxrss), so figures do not mix.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def throughput(path: Path, workers: int, codec_spec: str, repeat: int) -> tuple[float, float, float]:
    import codec

    with tempfile.TemporaryDirectory() as d:
        out, back = Path(d) / "x.nnc", Path(d) / "x.restored"
        best_c = best_d = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            r = codec.compress_file(path, out, codec=codec_spec, workers=workers, overwrite=True)
            best_c = min(best_c, time.perf_counter() - t)
            t = time.perf_counter()
            codec.decompress_file(out, back, workers=workers, overwrite=True)
            best_d = min(best_d, time.perf_counter() - t)
        size = path.stat().st_size
        return r.compressed_size / size, size / best_c / 1e6, size / best_d / 1e6


def make_big(path: Path, gib: float) -> None:
    """A BF16 safetensors file of `gib` GiB: 256 MiB tensors of N(0, 0.02)-like bits."""
    from codec.datasets import f32_to_bf16_bits

    rng = np.random.default_rng(0)
    block = f32_to_bf16_bits((rng.standard_normal(1 << 22) * 0.02).astype(np.float32))  # 8 MiB
    per = 256 << 20
    n = max(1, int(gib * (1 << 30)) // per)
    header = {f"layer.{i}.weight": {"dtype": "BF16", "shape": [per // 2],
                                    "data_offsets": [i * per, (i + 1) * per]} for i in range(n)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for i in range(n):
            for k in range(per // block.nbytes):
                f.write(np.roll(block, i * 131 + k).tobytes())


CHILD = r"""
import resource, sys, time, codec
op, src, dst = sys.argv[1:4]
t = time.perf_counter()
if op == "compress":
    codec.compress_file(src, dst, workers=2, overwrite=True)
else:
    codec.decompress_file(src, dst, workers=2, overwrite=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t)
"""


def peak_rss(op: str, src: Path, dst: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, op, str(src), str(dst)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rss-gib", type=float, nargs="*", default=[0.5, 6.0])
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--codec", default="auto")
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    args = ap.parse_args()
    from codec.datasets import minilm_path

    path = minilm_path()
    print(f"# throughput on {path.name} ({path.stat().st_size / 1e6:.1f} MB, FP32 MiniLM), codec={args.codec}")
    print(f"{'workers':>7} {'ratio':>8} {'compress MB/s':>14} {'decompress MB/s':>16}")
    for w in (1, 2):
        ratio, c, d = throughput(path, w, args.codec, args.repeat)
        print(f"{w:>7} {100 * ratio:>7.2f}% {c:>14.0f} {d:>16.0f}")
    if args.no_rss:
        return
    print("\n# peak RSS (MiB) in a child process, 2 workers")
    print(f"{'file GiB':>8} {'compress RSS':>13} {'s':>7} {'decompress RSS':>15} {'s':>7}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        for gib in args.rss_gib:
            src = Path(d) / f"big-{gib}.safetensors"
            make_big(src, gib)
            nnc = Path(d) / "big.nnc"
            c_rss, c_s = peak_rss("compress", src, nnc)
            os.unlink(src)
            d_rss, d_s = peak_rss("decompress", nnc, src)
            print(f"{src.stat().st_size / 2**30:>8.2f} {c_rss:>13.0f} {c_s:>7.1f} {d_rss:>15.0f} {d_s:>7.1f}")
            os.unlink(src)
            os.unlink(nnc)


if __name__ == "__main__":
    main()
