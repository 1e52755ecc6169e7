"""Cluster throughput: compress_many on a Dask LocalCluster with 1 and 2 worker processes.

    python benches/cluster.py [--copies 2] [--chunk-size 1048576] [--json]

Input: MiniLM-L6 rounded to BF16 (real weights, codec.datasets), written `--copies` times into a
folder (about 45 MB each). For each worker count it starts a LocalCluster on 127.0.0.1 (one
thread per worker process), warms the workers up (numba caches, imports) with one untimed run,
then times `compress_many(..., overwrite=True)` and `decompress_many`. It also prints the
single-process `compress_file(workers=1)` figure (the per-core rate) and the scheduler's cost
per no-op task, the two numbers the capacity plan in the README is built from.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per setting (best is kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import codec
    from codec import datasets
    from codec.distributed import compress_many, decompress_many
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="codec-cluster-"))
    src = tmp / "in"
    src.mkdir()
    tensors = datasets.minilm_tensors("BF16")
    for i in range(args.copies):
        datasets.write_safetensors(src / f"minilm-bf16-{i}.safetensors", tensors)
    total = sum(p.stat().st_size for p in src.iterdir())
    rows = {"input_bytes": total, "files": args.copies, "cpus": len(os.sched_getaffinity(0))}

    # per-core reference: one process, one thread
    first = next(iter(sorted(src.iterdir())))
    codec.compress_file(first, tmp / "warm.nnc", workers=1, overwrite=True, chunk_size=args.chunk_size)
    best = min(_timed(lambda: codec.compress_file(first, tmp / "one.nnc", workers=1, overwrite=True,
                                                  chunk_size=args.chunk_size)) for _ in range(args.repeat))
    rows["compress_file_1_thread_MBps"] = first.stat().st_size / 1e6 / best

    for n in (1, 2):
        with LocalCluster(n_workers=n, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None, silence_logs=50) as lc, Client(lc) as client:
            out, back = tmp / f"out{n}", tmp / f"back{n}"
            compress_many(src, client, output_dir=out, chunk_size=args.chunk_size, progress=False)  # warm-up
            t_c = min(_timed(lambda: _ok(compress_many(src, client, output_dir=out, overwrite=True,
                                                       chunk_size=args.chunk_size, progress=False)))
                      for _ in range(args.repeat))
            t_d = min(_timed(lambda: _ok(decompress_many(out, client, output_dir=back, overwrite=True,
                                                         progress=False)))
                      for _ in range(args.repeat))
            rows[f"compress_{n}w_MBps"] = total / 1e6 / t_c
            rows[f"decompress_{n}w_MBps"] = total / 1e6 / t_d
            if n == 1:
                t0 = time.perf_counter()
                client.gather(client.map(_noop, range(1000), pure=False))
                rows["scheduler_ms_per_task"] = (time.perf_counter() - t0) * 1e3 / 1000
    rows["compress_scaling_2w_over_1w"] = rows["compress_2w_MBps"] / rows["compress_1w_MBps"]
    rows["decompress_scaling_2w_over_1w"] = rows["decompress_2w_MBps"] / rows["decompress_1w_MBps"]
    rows["ratio"] = sum(p.stat().st_size for p in (tmp / "out2").iterdir()) / total

    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for k, v in rows.items():
            print(f"{k:<32} {v:.3f}" if isinstance(v, float) else f"{k:<32} {v}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _noop(x):
    return x


def _ok(rep):
    if not rep.ok:
        raise SystemExit(rep.summary())
    return rep


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
