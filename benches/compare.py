"""Side-by-side benchmark: codec vs zipnn, lmzip, z4ai, DFloat11 (size from its layout), zstd, bounds.

    python benches/compare.py [FILE.safetensors ...] [--out bench-out] [--threads 1 2] [--repeat 3]
                              [--rounds 1] [--skip zipnn lmzip z4ai zstd max] [--fresh-memory]

Without files it uses the real weights of benches/data.py (MiniLM F32 and its BF16/F16 roundings,
Whisper tiny F16 and its BF16 rounding). Ratio = compressed / original tensor bytes (codec: chunk
payloads + JSON configs; lmzip: archive / whole file). Speeds are MB/s of original bytes, best of
`--repeat` runs, over `--rounds` rounds in which every system runs once in turn (so that a slow
phase of a shared machine hits all of them); compare rows of one run only. Every system decodes
into new memory; freed memory is kept for reuse, so no row pays page faults the others do not
(keep_freed_memory; `--fresh-memory` to pay them in every row).
Writes a table to stdout, `results.csv` and `chart.png` into the output folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402

from codec.formats.frame import for_each  # noqa: E402
from codec.policy import choose_codec  # noqa: E402
from codec.source import ArraySource  # noqa: E402
from codec.stats import entropy_bits_of_counts  # noqa: E402

CHUNK = 1 << 19
_ZNAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_Z4 = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64"}


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory (large blocks too) for reuse instead of returning it.

    Every system here decodes into new memory (zipnn, z4ai and zstd allocate their outputs; codec
    rows allocate theirs in the timed call). A block of 32 MiB or more is a fresh mmap each time
    by default, so a run that allocates one pays the page faults of all of it and a run that
    allocates per tensor mostly does not: on this VM first-touch faults cost 1-2 GB/s and moved
    zipnn's BF16 decode from 2.7 to 1.4 GB/s. With freed memory kept, every system reuses warm
    pages and the rows compare decoders (`--fresh-memory`: every run pays new pages instead).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False            # not glibc: the rows keep the allocator's default behaviour
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def best_time(fn, repeat, setup=None):
    """(best seconds, last result) of `repeat` calls; fn(setup()) when setup is given, with
    setup's time left out."""
    best = math.inf
    out = None
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        t = time.perf_counter()
        out = fn(arg) if setup is not None else fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_codec(tensors, threads, repeat, level=None):
    """(ratio, compress s, decompress s) of codec's auto policy, chunks in a thread pool."""
    total = sum(b.size for _, b in tensors)

    def compress():
        # the way decompress below runs: the tensors' fits on the shared threads (largest first),
        # then every chunk of every tensor from one shared list
        fitted = [None] * len(tensors)

        def fit(i):
            dt, b = tensors[i]
            fitted[i] = choose_codec(dt, level).fit(ArraySource(b), dt)

        for_each(fit, sorted(range(len(tensors)), key=lambda i: -tensors[i][1].size), threads)
        frames, jobs = [], []
        for c, (dt, b) in zip(fitted, tensors):
            want = getattr(c, "default_chunk_size", CHUNK)   # what the container would use
            chunk = max(c.chunk_alignment(), want - want % c.chunk_alignment())
            pieces = [b[o:o + chunk] for o in range(0, b.size, chunk)]
            encs = [None] * len(pieces)
            frames.append((c, pieces, encs))
            jobs += [(c, p, encs, j) for j, p in enumerate(pieces)]

        def enc_one(job):
            c, p, encs, j = job
            e = getattr(c, "encode_buffer", c.encode)(p)
            encs[j] = e if len(e) < p.size else None      # raw fallback
        jobs.sort(key=lambda job: -job[1].size)
        for_each(enc_one, jobs, threads)
        return frames

    tc, frames = best_time(compress, repeat)
    size = 0
    for c, pieces, encs in frames:
        size += len(json.dumps(c.get_config())) + sum(len(e) if e is not None else p.size
                                                        for e, p in zip(encs, pieces))

    def dec_one(args):
        c, e, o = args
        c.decode(e, o)

    def decompress():
        # as the library decodes chunks (decode_frames, the inference hook): largest first,
        # threads drawing from one shared list (for_each), so a chunk costs no pool task of its
        # own; each tensor into a new array, as every other system here returns new memory
        jobs, outs = [], []
        for c, pieces, encs in frames:
            whole = np.empty(sum(p.size for p in pieces), np.uint8)
            os_, at = [], 0
            for e, p in zip(encs, pieces):
                o = whole[at:at + p.size]
                at += p.size
                os_.append(o)
                if e is None:
                    o[:] = p
                else:
                    jobs.append((c, e, o))
            outs.append(os_)
        jobs.sort(key=lambda j: -j[2].size)
        for_each(dec_one, jobs, threads)
        return outs

    td, outs = best_time(decompress, repeat)
    for (c, pieces, encs), os_ in zip(frames, outs):
        for p, o in zip(pieces, os_):
            if not np.array_equal(p, o):
                raise SystemExit(f"codec round trip failed for {c!r}")
    kinds = sorted({c.describe().split("(")[0] + (f"(k={c.mantissa_bits})" if hasattr(c, "mantissa_bits") else "")
                    for c, _, _ in frames})
    return size / total, tc, td, ",".join(kinds)


def run_container(tensors, threads, repeat):
    """(ratio, compress s, decompress s) end to end through frames: codec.compress per tensor,
    then every frame parsed (header, config, index checksums) and decoded at once with every
    checksum checked, as `codec.load_file` does once it has read the file (decode_frames)."""
    import codec
    from codec.dtypes import lookup
    from codec.formats.frame import decode_frames, parse_frame

    total = sum(b.size for _, b in tensors)
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
    typed = [(dt, b.view(uint[lookup(dt).itemsize])) for dt, b in tensors]
    tc, frames = best_time(lambda: [codec.compress(b, dtype=dt, workers=threads) for dt, b in typed], repeat)
    td, outs = best_time(lambda: decode_frames([parse_frame(f) for f in frames], workers=threads), repeat)
    for (dt, b), o in zip(tensors, outs):
        if not np.array_equal(b, o):
            raise SystemExit("codec container round trip failed")
    return sum(len(f) for f in frames) / total, tc, td


def run_zipnn(groups, threads, repeat):
    from zipnn import ZipNN

    total = sum(b.size for b in groups.values())
    size, tc, td = 0, 0.0, 0.0
    for dt, b in groups.items():
        if dt not in _ZNAMES:
            z = ZipNN(input_format="byte", bytearray_dtype="float32", threads=threads)
        else:
            z = ZipNN(input_format="byte", bytearray_dtype=_ZNAMES[dt], threads=threads)
        raw = b.tobytes()
        # zipnn rewrites its input in place: a fresh copy for every run, made outside the timing
        t, enc = best_time(z.compress, repeat, setup=lambda: bytearray(raw))
        tc += t
        t, dec = best_time(lambda: z.decompress(enc), repeat)
        td += t
        if bytes(dec) != raw:
            raise SystemExit("zipnn round trip failed")
        size += len(enc)
    return size / total, tc, td


def run_z4ai(groups, threads, repeat, effort=None):
    import z4ai

    total = sum(b.size for b in groups.values())
    size, tc, td = 0, 0.0, 0.0
    for dt, b in groups.items():
        raw = b.tobytes()
        t, enc = best_time(lambda: z4ai.compress(raw, dtype=_Z4.get(dt), threads=threads, effort=effort), repeat)
        tc += t
        t, dec = best_time(lambda: z4ai.decompress(enc), repeat)
        td += t
        if bytes(dec) != raw:
            raise SystemExit("z4ai round trip failed")
        size += len(enc)
    return size / total, tc, td


def run_lmzip(path, threads, repeat):
    import lmz

    with tempfile.TemporaryDirectory() as tmp:
        arc, back = os.path.join(tmp, "a.lmz"), os.path.join(tmp, "b.safetensors")
        tc, _ = best_time(lambda: lmz.compress(path, arc, workers=threads), repeat)
        td, _ = best_time(lambda: lmz.decompress(arc, back, workers=threads, overwrite=True), repeat)
        size = os.path.getsize(arc)
        with open(path, "rb") as f1, open(back, "rb") as f2:
            if f1.read() != f2.read():
                raise SystemExit("lmzip round trip failed")
    return size / os.path.getsize(path), tc, td


def run_zstd(groups, level, threads, repeat):
    import zstandard

    total = sum(b.size for b in groups.values())
    size, tc, td = 0, 0.0, 0.0
    for b in groups.values():
        raw = b.tobytes()
        cz = zstandard.ZstdCompressor(level=level, threads=threads if threads > 1 else 0)
        t, enc = best_time(lambda: cz.compress(raw), repeat)
        tc += t
        dz = zstandard.ZstdDecompressor()
        t, dec = best_time(lambda: dz.decompress(enc), repeat)
        td += t
        size += len(enc)
    return size / total, tc, td


def dfloat11_size(tensors):
    """Bytes of DFloat11's layout for the BF16 tensors (None if there are none).

    Per tensor (DFloat11 v0.2 format, `dfloat11/dfloat11.py` compress path): the exponent Huffman
    bitstream (code lengths <= 32, padded to whole bytes), one sign+mantissa byte per value, a 5-bit
    gap per 8-byte thread window, a u32 output position per block of 512 threads (+1), and the
    decode lookup tables: one 256-byte table per distinct 8-bit code prefix level plus 256 code
    lengths.
    """
    from codec.entropy import huffman

    total = 0
    any_bf16 = False
    for dt, b in tensors:
        if dt != "BF16":
            continue
        any_bf16 = True
        v = b.view("<u2")
        e = ((v >> 7) & 255).astype(np.int64)
        counts = np.bincount(e, minlength=256)
        lengths = huffman.code_lengths(counts, 32)
        nbits = int((counts * lengths.astype(np.int64)).sum())
        enc = (nbits + 7) // 8
        windows = (enc + 7) // 8
        blocks = (windows + 511) // 512
        luts = 256 * (max(1, math.ceil(int(lengths.max()) / 8)) + 1)
        total += enc + v.size + (5 * windows + 7) // 8 + 4 * (blocks + 1) + luts
    return total if any_bf16 else None


def bounds(tensors):
    """Order-0 bounds (fraction of the original): exponent-only (BF16), 16-bit value, byte planes."""
    total = sum(b.size for _, b in tensors)
    e_only = v16 = planes = 0.0
    for dt, b in tensors:
        isz = {"BF16": 2, "F16": 2, "F32": 4}.get(dt, 1)
        n = b.size // isz
        if dt == "BF16":
            v = b.view("<u2")
            e_only += entropy_bits_of_counts(np.bincount((v >> 7) & 255, minlength=256)) + 8 * n
        if isz == 2:
            v16 += entropy_bits_of_counts(np.bincount(b.view("<u2"), minlength=65536))
        else:
            v16 += 8 * b.size
        if dt in ("BF16", "F32"):
            w = b.view("<u2" if isz == 2 else "<u4").astype(np.uint64)
            w = ((w << np.uint64(1)) | (w >> np.uint64(8 * isz - 1))) & np.uint64((1 << (8 * isz)) - 1)
            pl = w.astype(f"<u{isz}").view(np.uint8).reshape(n, isz)
        else:
            pl = b[: n * isz].reshape(n, isz)
        for p in range(isz):
            planes += entropy_bits_of_counts(np.bincount(pl[:, p], minlength=256))
    out = {"bound: byte planes (order-0)": planes / (8 * total)}
    if any(dt in ("BF16", "F16") for dt, _ in tensors):  # a 16-bit value bound only means something there
        out["bound: 16-bit value (order-0)"] = v16 / (8 * total)
    if any(dt == "BF16" for dt, _ in tensors):
        out["bound: exponent only (order-0)"] = e_only / (8 * total)
    return out


def vs_zipnn(mine, theirs):
    """(compress, decompress): the median over rounds of zipnn's time / this system's time, or
    None without a zipnn time in every round this system ran."""
    if not mine or not theirs or len(mine) != len(theirs) or any(None in t for t in mine + theirs):
        return None
    return (float(np.median([z[0] / m[0] for m, z in zip(mine, theirs)])),
            float(np.median([z[1] / m[1] for m, z in zip(mine, theirs)])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every system this many times over, keeping each one's best (shared machines)")
    ap.add_argument("--skip", nargs="*", default=[], help="systems to skip (zipnn lmzip z4ai zstd max)")
    ap.add_argument("--fresh-memory", action="store_true",
                    help="let malloc return freed memory, so every run's outputs are new pages")
    args = ap.parse_args(argv)
    if not args.fresh_memory:
        keep_freed_memory()
    os.makedirs(args.out, exist_ok=True)
    files = {os.path.basename(f): f for f in args.files} or data.ensure_files(os.path.join(args.out, "data"))

    rows = []

    def add(file, system, threads, ratio, tc=None, td=None, size=None, note="", vs=None):
        mb = size / 1e6 if size else None
        row = {"file": file, "system": system, "threads": threads, "ratio_pct": round(100 * ratio, 3) if ratio else None,
               "compress_MBps": round(mb / tc, 1) if tc and mb else None,
               "decompress_MBps": round(mb / td, 1) if td and mb else None,
               "vs_zipnn_compress": round(vs[0], 3) if vs else None,
               "vs_zipnn_decompress": round(vs[1], 3) if vs else None, "note": note}
        rows.append(row)
        vs_text = f"{vs[0]:5.2f}x {vs[1]:5.2f}x" if vs else ""
        print(f"{file:24s} {system:34s} {str(threads):>3s} "
              f"{row['ratio_pct'] if row['ratio_pct'] is not None else '-':>8} "
              f"{row['compress_MBps'] or '-':>9} {row['decompress_MBps'] or '-':>9} {vs_text:>13s}  {note}",
              flush=True)

    print(f"{'file':24s} {'system':34s} {'thr':>3s} {'ratio%':>8s} {'comp MB/s':>9s} {'dec MB/s':>9s} "
          f"{'vs zipnn c/d':>13s}")
    for label, path in files.items():
        tensors = [(dt, np.ascontiguousarray(b)) for dt, b in data.load_tensors(path).values() if b.size]
        total = sum(b.size for _, b in tensors)
        groups: dict[str, list] = {}
        for dt, b in tensors:
            groups.setdefault(dt, []).append(b)
        groups = {dt: np.concatenate(bs) for dt, bs in groups.items()}
        for name, r in bounds(tensors).items():
            add(label, name, "-", r)
        d11 = dfloat11_size(tensors)
        if d11 is not None:
            nb = sum(b.size for dt, b in tensors if dt == "BF16")
            add(label, "dfloat11 (layout size)", "-", (d11 + total - nb) / total, note="BF16 tensors; others raw")
        # Every system runs once per round, and a row keeps its best time over the rounds: a slow
        # phase of a shared machine (minutes long here) then costs every system alike.
        best: dict = {}
        # each round's times too: a system's speed relative to zipnn's in the same round (seconds
        # apart), and the median of those over the rounds, which a slow phase moves far less
        # than a ratio of best times taken in different phases
        per_round: dict = {}

        def measure(nm, th, fn, note=""):
            if nm.split()[0] in args.skip or (nm.endswith("--level max") and "max" in args.skip):
                return
            try:
                r, tc, td, *extra = fn()
            except ImportError as exc:
                best.setdefault((nm, th), (None, None, None, f"not installed/importable: {exc}"))
                return
            except Exception as exc:  # report, keep going
                best.setdefault((nm, th), (None, None, None, f"failed: {type(exc).__name__}: {exc}"))
                return
            per_round.setdefault((nm, th), []).append((tc, td))
            old = best.get((nm, th))
            if old is not None and old[0] is not None:
                tc, td = min(tc, old[1]), min(td, old[2])
            best[(nm, th)] = (r, tc, td, extra[0] if extra else note)

        for _ in range(args.rounds):
            for th in args.threads:
                measure("codec auto", th, lambda: run_codec(tensors, th, args.repeat))
                measure("codec auto --level max", th, lambda: run_codec(tensors, th, args.repeat, "max"))
                measure("codec container (frames)", th, lambda: run_container(tensors, th, args.repeat),
                        "all frames at once, every checksum")
                measure("zipnn", th, lambda: run_zipnn(groups, th, args.repeat))
                measure("z4ai", th, lambda: run_z4ai(groups, th, args.repeat))
                measure("lmzip", th, lambda: run_lmzip(path, th, args.repeat))
                measure("zstd -3", th, lambda: run_zstd(groups, 3, th, args.repeat))
                measure("zstd -19", th, lambda: run_zstd(groups, 19, th, 1))
        for th in args.threads:
            for (nm, t), (r, tc, td, note) in best.items():
                if t == th:
                    add(label, nm, th, r, tc, td, total if r is not None else None, note,
                        vs_zipnn(per_round.get((nm, th)), per_round.get(("zipnn", th))) if nm != "zipnn" else None)

    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        chart(rows, os.path.join(args.out, "chart.png"))
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
    print(f"wrote {args.out}/results.csv and chart.png")


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted({r["file"] for r in rows})
    fig, axes = plt.subplots(len(files), 2, figsize=(13, 3.2 * len(files)), squeeze=False)
    for i, f in enumerate(files):
        rs = [r for r in rows if r["file"] == f and r["ratio_pct"] is not None and r["threads"] in ("-", 1)]
        ax = axes[i][0]
        ax.barh([r["system"] for r in rs], [r["ratio_pct"] for r in rs], color="tab:blue")
        lo = min(r["ratio_pct"] for r in rs)
        ax.set_xlim(max(0, lo - 3), max(r["ratio_pct"] for r in rs) + 1)
        ax.set_title(f"{f}: ratio % (lower is better)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax = axes[i][1]
        rs = [r for r in rows if r["file"] == f and r["decompress_MBps"]]
        labels = [f"{r['system']} x{r['threads']}" for r in rs]
        ax.barh(labels, [r["decompress_MBps"] for r in rs], color="tab:green", label="decompress")
        ax.barh(labels, [r["compress_MBps"] or 0 for r in rs], color="tab:orange", alpha=0.7, label="compress")
        ax.set_title(f"{f}: MB/s", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
