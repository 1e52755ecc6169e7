"""Text: bits per byte and KB/s of `codec --codec llm` against zstd -19, xz -9, bz2 -9, brotli -11.

    python benches/text.py                          # English prose (48 KB) and Python source (16 KB)
    python benches/text.py --prose-kb 40 --code-kb 0 --llm '{"id": "llm", "dtype": "float32"}'
    python benches/text.py --json

Inputs are not in the repository's tests: English prose is the Python language reference as
shipped in the standard library (`pydoc_data.topics`, topic "compound"), source code is
`tqdm/std.py` from site-packages (falls back to `json/decoder.py` of the standard library).
`codec` figures are for whole files through `compress_file`/`decompress_file` (frame overhead
included, round trip checked); model loading is done once, before timing. The baselines run
in-process on the same bytes. KB = 1000 bytes.
"""
from __future__ import annotations

import argparse
import bz2
import importlib.util
import json
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path


def corpora(prose_kb: int, code_kb: int) -> dict[str, bytes]:
    out = {}
    if prose_kb:
        import pydoc_data.topics as topics

        text = topics.topics["compound"].encode()
        out["English prose (Python reference, 'compound')"] = text[:prose_kb * 1000]
    if code_kb:
        spec = importlib.util.find_spec("tqdm")
        path = Path(spec.origin).parent / "std.py" if spec and spec.origin else None
        if path is None or not path.exists():
            import json as _json

            path = Path(_json.__file__).parent / "decoder.py"
        out[f"Python source ({path.parent.name}/{path.name})"] = path.read_bytes()[:code_kb * 1000]
    return out


def baselines() -> dict:
    import zstandard

    b = {
        "zstd -19": (lambda d: zstandard.ZstdCompressor(level=19).compress(d),
                     lambda c: zstandard.ZstdDecompressor().decompress(c)),
        "xz -9": (lambda d: lzma.compress(d, preset=9), lzma.decompress),
        "bz2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress),
    }
    try:
        import brotli

        b["brotli -11"] = (lambda d: brotli.compress(d, quality=11), brotli.decompress)
    except ImportError:
        pass
    return b


def timed(fn, arg, repeat: int = 3):
    best, res = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn(arg)
        best = min(best, time.perf_counter() - t)
    return res, best


def bench_llm(data: bytes, spec: dict, workers: int) -> tuple[int, float, float]:
    import codec

    with tempfile.TemporaryDirectory() as d:
        src, nnc, back = Path(d) / "x.txt", Path(d) / "x.txt.nnc", Path(d) / "x.restored"
        src.write_bytes(data)
        t = time.perf_counter()
        r = codec.compress_file(src, nnc, codec=spec, workers=workers, overwrite=True)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        codec.decompress_file(nnc, back, workers=workers, overwrite=True)
        td = time.perf_counter() - t
        if back.read_bytes() != data:
            raise SystemExit("llm round trip FAILED")
        from codec.formats.nncfile import NncFile

        with NncFile(nnc) as nf:      # the coded chunks alone, without the file's ~1 KB of headers
            payload = sum(int(nf.frame(e).index["size"].sum()) for e in nf.entries)
        return r.compressed_size, payload, tc, td


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prose-kb", type=int, default=48)
    ap.add_argument("--code-kb", type=int, default=16)
    ap.add_argument("--llm", action="append", default=None,
                    help='codec config of the LLM coder (JSON; repeat to compare; default {"id": "llm"})')
    ap.add_argument("--llm-code", action="append", default=None,
                    help="LLM configs for the source-code input (default: the first --llm)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    specs = [json.loads(x) for x in (args.llm or ['{"id": "llm"}'])]
    code_specs = [json.loads(x) for x in args.llm_code] if args.llm_code else specs[:1]

    from codec.registry import get_codec

    # Load the model (and build the SmolLM2 cache on first use) outside the timings.
    t = time.perf_counter()
    fitted = {json.dumps(s, sort_keys=True): get_codec(s).fit(None, "U8") for s in specs + code_specs}
    load_s = time.perf_counter() - t
    rows = []
    for name, data in corpora(args.prose_kb, args.code_kb).items():
        n = len(data)
        for label, (comp, decomp) in baselines().items():
            c, tc = timed(comp, data)
            back, td = timed(decomp, c)
            assert back == data
            rows.append({"input": name, "bytes": n, "codec": label, "compressed": len(c),
                         "bits_per_byte": 8 * len(c) / n, "compress_kb_s": n / tc / 1e3,
                         "decompress_kb_s": n / td / 1e3})
        xz = next(r for r in rows if r["input"] == name and r["codec"] == "xz -9")
        for spec in (code_specs if name.startswith("Python source") else specs):
            size, payload, tc, td = bench_llm(data, spec, args.workers)
            extra = {k: v for k, v in spec.items() if k != "id"}
            rows.append({"input": name, "bytes": n, "codec": "codec llm" + (f" {json.dumps(extra)}" if extra else ""),
                         "config": fitted[json.dumps(spec, sort_keys=True)].describe(),
                         "compressed": size, "bits_per_byte": 8 * size / n, "compress_kb_s": n / tc / 1e3,
                         "decompress_kb_s": n / td / 1e3, "vs_xz": size / xz["compressed"],
                         "payload": payload, "payload_vs_xz": payload / xz["compressed"]})
    if args.json:
        print(json.dumps({"model_load_s": load_s, "cpus": os.cpu_count(), "rows": rows}, indent=2))
        return 0
    print(f"model load + fingerprint check: {load_s:.1f} s; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)")
    for f in fitted.values():
        print(f"  {f.describe()}")
    cur = None
    for r in rows:
        if r["input"] != cur:
            cur = r["input"]
            print(f"\n{cur}: {r['bytes']} bytes")
            print(f"  {'codec':<44} {'bytes':>8} {'bits/byte':>9} {'compress KB/s':>14} {'decompress KB/s':>16}")
        extra = (f"  ({100 * r['vs_xz']:.1f} % of xz -9; coded chunks alone {r['payload']} B, "
                 f"{100 * r['payload_vs_xz']:.1f} %)") if "vs_xz" in r else ""
        print(f"  {r['codec'][:44]:<44} {r['compressed']:>8} {r['bits_per_byte']:>9.3f} "
              f"{r['compress_kb_s']:>14.2f} {r['decompress_kb_s']:>16.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
