"""GPU decode throughput of `exponent` frames against a device-to-device copy of the same size.

    python benches/gpu_decode.py                  # MiniLM encoder layers rounded to BF16, on the GPU
    python benches/gpu_decode.py --repeat 50      # more timed launches per layer
    python benches/gpu_decode.py --cpu-runtime    # no GPU: run the same kernel on the CPU runtime
                                                  # (a functional smoke run; its times mean nothing)

GB/s counts decoded output bytes per second. Each transformer block is decoded by one launch
(BlockDecoder.decode_raw into a reused buffer), timed with CUDA events after a warm-up that
is discarded; the copy baseline is cupy's device-to-device copy of the same number of bytes.
Exits with status 3 and a message where there is no GPU (and --cpu-runtime is not given).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time

import numpy as np


def layer_frames(tensors, layer: int) -> tuple[dict, int]:
    from codec.entropy.exponent import Exponent, build_gpu_sync
    from codec.formats.frame import SEC_GPU_SYNC, parse_frame, write_frame
    from codec.source import ArraySource

    class SyncExponent(Exponent):
        extra_section_types = (SEC_GPU_SYNC,)
        sizes: list = []

        def extra_sections(self, chunks):
            return {SEC_GPU_SYNC: build_gpu_sync(self, chunks, self.sizes)}

    frames, nbytes = {}, 0
    chunk = 1 << 20
    for name, (dt, shape, raw) in tensors.items():
        if not name.startswith(f"encoder.layer.{layer}.") or dt != "BF16":
            continue
        fitted = Exponent(gpu_sync=True).fit(ArraySource(raw), "BF16")
        codec = SyncExponent.from_config(fitted.get_config())
        codec.sizes = [min(chunk, raw.size - s) // 2 for s in range(0, raw.size, chunk)]
        bio = io.BytesIO()
        write_frame(bio, ArraySource(raw), codec, "BF16", shape, chunk_size=chunk)
        frames[name] = parse_frame(memoryview(bio.getvalue()))
        nbytes += raw.size
    return frames, nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--cpu-runtime", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import codec.gpu
    from codec import datasets

    if args.cpu_runtime:
        from codec.gpu.cpu_runtime import CpuDevice

        device = CpuDevice(schedule="forward")
    elif not codec.gpu.available():
        print("gpu_decode: no usable GPU (CuPy with a CUDA device is needed); nothing measured. "
              "Use --cpu-runtime for a functional run on the CPU.", file=sys.stderr)
        return 3
    else:
        device = None

    tensors = datasets.minilm_tensors("BF16")
    rows = []
    for layer in range(args.layers):
        frames, nbytes = layer_frames(tensors, layer)
        dec = codec.gpu.BlockDecoder(frames, device=device)
        out = dec.decode_raw()
        for s in dec.slots:   # correctness before speed
            got = out[s.byte_offset:s.byte_offset + s.nbytes]
            got = got.get() if hasattr(got, "get") else np.asarray(got)
            if got.tobytes() != tensors[s.name][2].tobytes():
                print(f"gpu_decode: MISMATCH in {s.name}", file=sys.stderr)
                return 1
        enc = sum(f.length for f in frames.values())
        if device is None:
            import cupy as cp

            src = cp.empty(dec.nbytes, cp.uint8)
            dst = cp.empty_like(src)
            for _ in range(3):
                dec.decode_raw(out)
                dst[...] = src
            t0, t1 = cp.cuda.Event(), cp.cuda.Event()
            t0.record()
            for _ in range(args.repeat):
                dec.decode_raw(out)
            t1.record()
            t1.synchronize()
            dec_s = cp.cuda.get_elapsed_time(t0, t1) / 1e3 / args.repeat
            t0.record()
            for _ in range(args.repeat):
                dst[...] = src
            t1.record()
            t1.synchronize()
            copy_s = cp.cuda.get_elapsed_time(t0, t1) / 1e3 / args.repeat
        else:
            t = time.perf_counter()
            dec.decode_raw(out)
            dec_s, copy_s = time.perf_counter() - t, float("nan")
        rows.append({"layer": layer, "tensors": len(frames), "bytes": nbytes, "encoded": enc,
                     "ratio": enc / nbytes, "decode_GBps": nbytes / dec_s / 1e9,
                     "copy_GBps": nbytes / copy_s / 1e9 if copy_s == copy_s else None,
                     "launches": len(dec.plans)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'layer':>5} {'tensors':>7} {'MB':>7} {'ratio':>6} {'decode GB/s':>11} {'copy GB/s':>9}")
        for r in rows:
            copy = f"{r['copy_GBps']:9.1f}" if r["copy_GBps"] else "        -"
            print(f"{r['layer']:5d} {r['tensors']:7d} {r['bytes'] / 1e6:7.2f} {r['ratio']:6.3f} "
                  f"{r['decode_GBps']:11.3f} {copy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
