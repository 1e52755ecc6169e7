"""Foundation figures: file compress/decompress throughput by worker count, and peak RSS vs file size.

    python benches/foundation.py                     # MiniLM throughput + RSS on 0.5 and 6 GiB files
    python benches/foundation.py --rss-gib 0.5 6     # choose the generated sizes
    python benches/foundation.py --no-rss            # throughput only
    python benches/foundation.py FILE... --no-rss    # throughput on these safetensors files

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


def _best(fn, repeat: int, setup=None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            p.unlink()


def throughput(path: Path, workers: int, codec_spec: str, repeat: int) -> dict:
    """MB/s of the original through codec's four file paths, each the best of `repeat` runs, the
    output removed before each run (outside the timing): replacing a file costs what the file
    system does on a rename over an existing file (ext4 flushes the new data then, 32 ms for 45
    MB here), which a fresh output does not pay."""
    import codec

    with tempfile.TemporaryDirectory() as d:
        out, back = Path(d) / "x.nnc", Path(d) / "x.restored"
        codec.compress_file(path, out, codec=codec_spec, workers=workers)      # first use: compiles
        tc = _best(lambda: codec.compress_file(path, out, codec=codec_spec, workers=workers), repeat,
                   lambda: _remove(out))
        td = _best(lambda: codec.decompress_file(out, back, workers=workers), repeat, lambda: _remove(back))
        tv = _best(lambda: codec.verify(out, workers=workers), repeat)
        tl = _best(lambda: codec.load_file(out, workers=workers), repeat)
        size = path.stat().st_size
        return {"ratio": out.stat().st_size / size, "compress": size / tc / 1e6, "decompress": size / td / 1e6,
                "verify": size / tv / 1e6, "load": size / tl / 1e6}


def zipnn_whole_file(path: Path, threads: int, repeat: int) -> dict | None:
    """ZipNN over the same file as one buffer of its main dtype: read the file, compress, write the
    result, and back the same way; no hash. (A whole-file tool built on ZipNN's API does no less.)"""
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    dtypes = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    raw = path.read_bytes()
    head = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    counts: dict[str, int] = {}
    for k, v in head.items():
        if k != "__metadata__":
            counts[v["dtype"]] = counts.get(v["dtype"], 0) + v["data_offsets"][1] - v["data_offsets"][0]
    z = ZipNN(input_format="byte", bytearray_dtype=dtypes.get(max(counts, key=counts.get), "float32"),
              threads=threads)
    with tempfile.TemporaryDirectory() as d:
        out, back = Path(d) / "x.znn", Path(d) / "x.restored"

        def compress() -> None:
            out.write_bytes(z.compress(bytearray(path.read_bytes())))

        def decompress() -> None:
            back.write_bytes(z.decompress(out.read_bytes()))

        compress()
        tc = _best(compress, repeat, lambda: _remove(out))
        td = _best(decompress, repeat, lambda: _remove(back))
        if back.read_bytes() != path.read_bytes():
            raise SystemExit("zipnn round trip failed")
        size = path.stat().st_size
        return {"ratio": out.stat().st_size / size, "compress": size / tc / 1e6, "decompress": size / td / 1e6}


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
    ap.add_argument("files", nargs="*", help="safetensors files (default: MiniLM FP32)")
    ap.add_argument("--rss-gib", type=float, nargs="*", default=[0.5, 6.0])
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--codec", default="auto")
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    args = ap.parse_args()
    from codec.datasets import minilm_path

    paths = [Path(f) for f in args.files] or [minilm_path()]
    print(f"# whole files, MB/s of the original, best of {args.repeat}; codec={args.codec}: compress_file, "
          "decompress_file (output checked against the original's XXH3), verify, load_file; zipnn: read, "
          "compress as one buffer, write (and back), no hash")
    print(f"{'file':<32} {'system':<6} {'workers':>7} {'ratio':>8} {'compress':>9} {'decompress':>11} "
          f"{'verify':>7} {'load':>7}")
    for path in paths:
        for w in (1, 2):
            r = throughput(path, w, args.codec, args.repeat)
            print(f"{path.name[:32]:<32} {'codec':<6} {w:>7} {100 * r['ratio']:>7.2f}% {r['compress']:>9.0f} "
                  f"{r['decompress']:>11.0f} {r['verify']:>7.0f} {r['load']:>7.0f}", flush=True)
            z = zipnn_whole_file(path, w, args.repeat)
            if z is not None:
                print(f"{path.name[:32]:<32} {'zipnn':<6} {w:>7} {100 * z['ratio']:>7.2f}% {z['compress']:>9.0f} "
                      f"{z['decompress']:>11.0f} {'-':>7} {'-':>7}", flush=True)
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
