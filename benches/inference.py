"""Inference with compressed weights: memory saved and time it costs (SmolLM2-135M, CPU).

    python benches/inference.py                         # BF16 and F32, batch 1 and 8, 16 new tokens
    python benches/inference.py --dtype BF16 --tokens 32 --batch 1 8

For each configuration a fresh child process loads the model (plain safetensors with
transformers, `codec.load_model(mode="eager")`, `mode="on_the_fly"`), generates greedily, and
reports resident weight bytes (parameter storage + compressed bytes kept for on-the-fly blocks),
peak RSS and tokens per second. Runs on however many cores the machine has (2 here).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time, torch, transformers
import codec
from codec.hooks import weight_bytes
kind, folder, batch, tokens, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(max(1, torch.get_num_threads()))
t0 = time.perf_counter()
if kind == "plain":
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16 if dtype == "BF16" else torch.float32).eval()
    resident = weight_bytes(model)
else:
    model = codec.load_model(folder, mode=kind)
    resident = weight_bytes(model) + model.codec_handle.resident_bytes
load_s = time.perf_counter() - t0
tok = transformers.AutoTokenizer.from_pretrained(folder)
prompts = ["The history of data compression begins with"] * batch
ids = tok(prompts, return_tensors="pt").input_ids
with torch.inference_mode():
    model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    gen_s = time.perf_counter() - t
print(json.dumps({"resident": resident, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "load_s": load_s, "tok_s": batch * tokens / gen_s}))
"""


def prepare(root: Path, dtype: str) -> tuple[Path, Path]:
    import codec
    from codec import datasets

    src = datasets.smollm2_dir()
    plain, packed = root / f"plain-{dtype}", root / f"packed-{dtype}"
    for d in (plain, packed):
        d.mkdir()
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, d / f.name)
    st = src / "model.safetensors"
    if dtype == "BF16":
        tensors, meta = datasets.read_safetensors(st)
        conv = {k: ("BF16", s, datasets.f32_to_bf16_bits(r.view(np.float32)).view(np.uint8))
                if dt == "F32" else (dt, s, r) for k, (dt, s, r) in tensors.items()}
        datasets.write_safetensors(plain / "model.safetensors", conv, meta)
    else:
        shutil.copy(st, plain / "model.safetensors")
    r = codec.compress_file(plain / "model.safetensors", packed / "model.safetensors.nnc")
    print(f"# {dtype}: {r.summary('compressed')}", flush=True)
    return plain, packed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", nargs="+", default=["BF16", "F32"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    print(f"{'dtype':<5} {'weights':<11} {'batch':>5} {'resident MB':>12} {'peak RSS MB':>12} "
          f"{'load s':>7} {'tokens/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtype:
            plain, packed = prepare(Path(tmp), dtype)
            for kind, folder in (("plain", plain), ("eager", packed), ("on_the_fly", packed)):
                for batch in args.batch:
                    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(folder), str(batch),
                                          str(args.tokens), dtype], capture_output=True, text=True)
                    if out.returncode:
                        print(f"{dtype:<5} {kind:<11} {batch:>5} failed: {out.stderr.strip()[-300:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"{dtype:<5} {kind:<11} {batch:>5} {r['resident'] / 1e6:>12.1f} {r['rss'] / 1e6:>12.1f} "
                          f"{r['load_s']:>7.2f} {r['tok_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
