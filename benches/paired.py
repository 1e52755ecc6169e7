"""Paired speed comparison of codec and zipnn: the two alternate, run after run, on the same bytes.

    python benches/paired.py [FILE.safetensors ...] [--pairs 30] [--threads 1]

On a shared machine whose speed drifts for minutes at a time, a ratio of two best times taken
minutes apart (benches/compare.py) can be off by 20 %. Here each codec run is followed at once by
a zipnn run, and the ratio of every such pair is kept: the median of those ratios is what a slow
phase moves least. Decoding runs as in compare.py's `codec auto` row (every chunk of every tensor
on shared threads, largest first, into new arrays; freed memory kept for reuse by both), encoding
as its compress (every tensor's fit on the shared threads, then every chunk). zipnn gets a fresh
copy of its input for every compress, made outside the timing (it rewrites its input in place).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from compare import _ZNAMES, keep_freed_memory  # noqa: E402

from codec.formats.frame import for_each  # noqa: E402
from codec.policy import choose_codec  # noqa: E402
from codec.source import ArraySource  # noqa: E402


def codec_runs(tensors, threads):
    """(compress, decompress) callables of codec's auto policy, and the encoded chunks."""
    def compress():
        # as codec.compress_file: the fits on the shared threads (largest first), then the chunks
        fitted = [None] * len(tensors)

        def fit(i):
            dt, b = tensors[i]
            fitted[i] = choose_codec(dt).fit(ArraySource(b), dt)

        for_each(fit, sorted(range(len(tensors)), key=lambda i: -tensors[i][1].size), threads)
        jobs = []
        for (dt, b), c in zip(tensors, fitted):
            size = c.default_chunk_size - c.default_chunk_size % c.chunk_alignment()
            jobs += [(c, b[o:o + size]) for o in range(0, b.size, size)]
        encs = [None] * len(jobs)

        def one(i):
            c, p = jobs[i]
            e = c.encode_buffer(p)
            encs[i] = (c, e if len(e) < p.size else None, p)

        for_each(one, sorted(range(len(jobs)), key=lambda i: -jobs[i][1].size), threads)
        return encs

    encoded = compress()

    def decompress():
        work = []
        for c, e, p in encoded:
            out = np.empty(p.size, np.uint8)
            if e is None:
                out[:] = p
            else:
                work.append((c, e, out))
        work.sort(key=lambda j: -j[2].size)
        for_each(lambda j: j[0].decode(j[1], j[2]), work, threads)

    return compress, decompress, encoded


def zipnn_runs(tensors, threads):
    from zipnn import ZipNN

    groups: dict[str, list] = {}
    for dt, b in tensors:
        groups.setdefault(dt, []).append(b)
    items = []
    for dt, bs in groups.items():
        z = ZipNN(input_format="byte", bytearray_dtype=_ZNAMES.get(dt, "float32"), threads=threads)
        raw = np.concatenate(bs).tobytes()
        items.append((z, raw, z.compress(bytearray(raw))))

    def compress(copies):
        for (z, _, _), buf in zip(items, copies):
            z.compress(buf)

    def decompress():
        for z, _, enc in items:
            z.decompress(enc)

    return compress, decompress, items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    keep_freed_memory()
    files = args.files or list(data.ensure_files(os.path.join("bench-out", "data")).values())
    pc = time.perf_counter
    print(f"{'file':30s} {'op':10s} {'codec MB/s':>10s} {'zipnn MB/s':>10s} {'bests':>6s} "
          f"{'median':>7s} {'quartiles':>11s}   (codec vs zipnn, {args.threads} thread(s), {args.pairs} pairs)")
    for path in files:
        tensors = [(dt, np.ascontiguousarray(b)) for dt, b in data.load_tensors(path).values() if b.size]
        total = sum(b.size for _, b in tensors)
        c_comp, c_dec, encoded = codec_runs(tensors, args.threads)
        for c, e, p in encoded:         # the round trip, once, in bits
            out = np.empty(p.size, np.uint8)
            if e is not None:
                c.decode(e, out)
                if not np.array_equal(out, p):
                    raise SystemExit(f"codec round trip failed on {path}")
        z_comp, z_dec, items = zipnn_runs(tensors, args.threads)
        for op in ("decompress", "compress"):
            tc, tz = [], []
            for _ in range(args.pairs):
                if op == "compress":
                    copies = [bytearray(raw) for _, raw, _ in items]
                    s = pc(); c_comp(); tc.append(pc() - s)
                    s = pc(); z_comp(copies); tz.append(pc() - s)
                else:
                    s = pc(); c_dec(); tc.append(pc() - s)
                    s = pc(); z_dec(); tz.append(pc() - s)
            tc, tz = np.array(tc), np.array(tz)
            q1, q3 = np.percentile(tz / tc, [25, 75])
            print(f"{os.path.basename(path):30s} {op:10s} {total / tc.min() / 1e6:10.0f} {total / tz.min() / 1e6:10.0f} "
                  f"{tz.min() / tc.min():5.2f}x {np.median(tz / tc):6.2f}x {q1:5.2f}-{q3:4.2f}x", flush=True)


if __name__ == "__main__":
    main()
