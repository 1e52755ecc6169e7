"""Quantized checkpoints: codec vs zstd -3 / -19 and the order-0 bound of each field; int4 RTN bits/weight;
--lossy int8/int4 on SmolLM2 (file size, perplexity change) beside lossless BF16.

    python benches/quant.py [--no-ppl] [--workdir DIR]

Test files: FP8 e4m3 and e5m2 casts (torch) of MiniLM (F32) and Whisper tiny.en (F16), and the
SmolLM2-135M-Instruct Q4_1 GGUF. Ratios are compressed/original (smaller is better).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

from codec import datasets
from codec.api import compress_file, decompress_file
from codec.stats import byte_entropy_bits


def zsize(path, level):
    return len(zstandard.ZstdCompressor(level=level, threads=2).compress(Path(path).read_bytes()))


def fp8_file(dst, src_tensors, fmt, name):
    out = {}
    for k, (dt, sh, raw) in src_tensors.items():
        if dt == "F32":
            t = torch.from_numpy(raw.view(np.float32).copy())
        elif dt == "F16":
            t = torch.from_numpy(raw.view(np.float16).copy()).float()
        else:
            out[k] = (dt, sh, raw)
            continue
        out[k] = (name, sh, t.to(fmt).view(torch.uint8).numpy())
    return datasets.write_safetensors(dst, out)


def fp8_fields(path):
    tensors, _ = datasets.read_safetensors(path)
    b = np.concatenate([r for dt, _, r in tensors.values() if dt.startswith("F8")])
    e, m = (4, 3) if any(dt == "F8_E4M3" for dt, _, _ in tensors.values()) else (5, 2)
    n = b.size
    h = {"byte": byte_entropy_bits(b) / n, "sign": byte_entropy_bits(b >> 7) / n,
         "exp": byte_entropy_bits((b >> m) & ((1 << e) - 1)) / n, "mant": byte_entropy_bits(b & ((1 << m) - 1)) / n}
    h["exp-only scheme"] = h["exp"] + 1 + m
    return "  ".join(f"{k} {v:.3f}" for k, v in h.items()) + " bits"


def gguf_fields(path):
    import mmap

    from codec.gguf import layout, parse
    from codec.transforms.ggml import LAYOUTS, _streams_of

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        info = parse(mm)
        buf = np.frombuffer(mm, np.uint8)
        acc = {}
        for role, s, n, t in layout(info, len(mm)):
            if role == "tensor" and t.type_name in LAYOUTS:
                be, bb, fields = LAYOUTS[t.type_name]
                for name, st in _streams_of(buf[s:s + n].reshape(-1, bb), fields):
                    key = f"{t.type_name}.{name}"
                    a = acc.setdefault(key, [0.0, 0])
                    a[0] += byte_entropy_bits(st)
                    a[1] += st.size
        del buf
    return "  ".join(f"{k} {v[0] / v[1]:.2f}" for k, v in acc.items()) + " bits/byte"


def lossless_table(work: Path):
    files = []
    mini = datasets.minilm_tensors("F32")
    wh, _ = datasets.read_ct2(datasets.whisper_ct2_path())
    for label, src in (("MiniLM", mini), ("Whisper tiny.en", wh)):
        for fmt, name in ((torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2")):
            p = fp8_file(work / f"{label.split()[0]}-{name}.safetensors", src, fmt, name)
            files.append((f"{label} {name}", p, fp8_fields))
    files.append(("SmolLM2-135M Q4_1 GGUF", datasets.smollm2_gguf_path(), gguf_fields))
    print("| file | size | codec | zstd -3 | zstd -19 | compress s | order-0 bound per field |")
    print("|---|---|---|---|---|---|---|")
    for label, p, fields in files:
        size = p.stat().st_size
        t0 = time.perf_counter()
        r = compress_file(p, work / "x.nnc", overwrite=True, workers=2)
        dt = time.perf_counter() - t0
        decompress_file(work / "x.nnc", work / "x.back", overwrite=True, workers=2)
        assert (work / "x.back").read_bytes() == p.read_bytes(), label
        z3, z19 = zsize(p, 3), zsize(p, 19)
        win = "**" if r.compressed_size < z19 else ""
        print(f"| {label} | {size / 1e6:.1f} MB | {win}{100 * r.ratio:.2f} %{win} | {100 * z3 / size:.2f} % | "
              f"{100 * z19 / size:.2f} % | {dt:.1f} | {fields(p)} |", flush=True)


def int4_bits(work: Path):
    from codec.quantize import Quant

    print("\n| weights | int4 RTN g128 codes: entropy | coded codes | + scales, zeros | total bits/weight |")
    print("|---|---|---|---|---|")
    for label, tensors in (("MiniLM F32", datasets.minilm_tensors("F32")),
                           ("SmolLM2 (dequantized GGUF) F32", datasets.read_safetensors(
                               datasets.smollm2_dir() / "model.safetensors")[0])):
        n = ent = code_bits = side_bits = 0
        for k, (dt, sh, raw) in tensors.items():
            if dt != "F32" or len(sh) < 2:
                continue
            q = Quant("int4", 128, "F32")
            for off in range(0, raw.size, 1 << 20):
                ch = raw[off:off + (1 << 20)]
                enc = np.frombuffer(q.encode(ch), np.uint8)
                st = q.streams(ch, enc.tobytes())
                n += ch.size // 4
                ent += st[0].entropy_bits
                code_bits += st[0].spent_bits
                side_bits += sum(s.spent_bits for s in st[1:])
        print(f"| {label} | {ent / n:.3f} | {code_bits / n:.3f} | {side_bits / n:.3f} | "
              f"{(code_bits + side_bits) / n:.3f} |", flush=True)


def perplexity(model_dir: Path, text: str) -> float:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    model.eval()
    ids = tok(text, return_tensors="pt").input_ids[:, :1024]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return math.exp(float(loss))


def lossy_table(work: Path, ppl: bool):
    import shutil

    src_dir = datasets.smollm2_dir()
    text = Path("/usr/share/common-licenses/Apache-2.0").read_text()
    # the lossless reference: SmolLM2 rounded to BF16 (how published BF16 checkpoints are made)
    tensors, meta = datasets.read_safetensors(src_dir / "model.safetensors")
    bf = {k: (("BF16", sh, datasets.f32_to_bf16_bits(r.view(np.float32)).view(np.uint8)) if dt == "F32"
              else (dt, sh, r)) for k, (dt, sh, r) in tensors.items()}
    bf_dir = work / "smollm2-bf16"
    shutil.copytree(src_dir, bf_dir, dirs_exist_ok=True)
    datasets.write_safetensors(bf_dir / "model.safetensors", bf, meta)
    base = bf_dir / "model.safetensors"
    size = base.stat().st_size
    rows = []
    ppl_base = perplexity(bf_dir, text) if ppl else float("nan")
    r = compress_file(base, work / "bf16.nnc", overwrite=True, workers=2)
    rows.append(("BF16 lossless (auto)", r.compressed_size, ppl_base, None))
    for scheme in ("int8", "int4"):
        nnc = work / f"{scheme}.nnc"
        r = compress_file(base, nnc, overwrite=True, workers=2, lossy=scheme, group_size=128)
        d = work / f"smollm2-{scheme}"
        shutil.copytree(bf_dir, d, dirs_exist_ok=True)
        decompress_file(nnc, d / "model.safetensors", overwrite=True, workers=2)
        back, _ = datasets.read_safetensors(d / "model.safetensors")
        num = den = 0.0
        for k, (dt, sh, raw) in bf.items():
            if dt == "BF16":
                a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                b = (back[k][2].view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                num += float(((a - b).astype(np.float64) ** 2).sum())
                den += float((a.astype(np.float64) ** 2).sum())
        rows.append((f"--lossy {scheme} g128", r.compressed_size,
                     perplexity(d, text) if ppl else float("nan"), math.sqrt(num / den)))
    n_params = sum(math.prod(sh) for dt, sh, _ in bf.values() if dt == "BF16")
    print(f"\nSmolLM2-135M as BF16 safetensors ({size / 1e6:.1f} MB, {n_params / 1e6:.1f} M params); "
          f"perplexity on the Apache-2.0 license text (first 1024 tokens)")
    print("| file | size | ratio | bits/weight | rel. RMS weight error | perplexity | change |")
    print("|---|---|---|---|---|---|---|")
    for label, sz, p, err in rows:
        print(f"| {label} | {sz / 1e6:.2f} MB | {100 * sz / size:.2f} % | {8 * sz / n_params:.2f} | "
              f"{'-' if err is None else f'{err:.4f}'} | {p:.3f} | {100 * (p / ppl_base - 1):+.2f} % |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", choices=["lossless", "int4", "lossy"], default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        work = Path(d)
        if a.only in (None, "lossless"):
            lossless_table(work)
        if a.only in (None, "int4"):
            int4_bits(work)
        if a.only in (None, "lossy"):
            lossy_table(work, not a.no_ppl)


if __name__ == "__main__":
    sys.exit(main())
