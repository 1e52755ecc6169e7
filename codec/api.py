"""The Python API: arrays and bytes in memory, files on disk, lazy reading, verification.

Keyword names match the CLI's options (`codec=`, `level=`, `workers=`, `overwrite=`).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .arrays import from_bytes, to_bytes_and_dtype, torch_aligned
from .checksum import Hasher, hash_file, whole_file_check, xxh3_hex
from .errors import CodecError, FormatError
from .policy import resolve


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# --------------------------------------------------------------------------------------
# In memory: one frame
# --------------------------------------------------------------------------------------
def compress(data, codec="auto", *, level: int | None = None, workers: int = 1,
             chunk_size: int | None = None, dtype: str | None = None) -> bytes:
    """Compress a numpy array, torch tensor or bytes into one self-describing frame.

    `dtype` names the logical safetensors dtype when numpy holds it as raw bits (e.g. "BF16" for a
    uint16 array of bfloat16 bit patterns, "F8_E4M3" for uint8); it must have the same item size.
    """
    from .dtypes import lookup
    from .formats.frame import encode_frame
    from .source import ArraySource

    flat, natural, shape = to_bytes_and_dtype(data)
    if dtype is None:
        dtype = natural
    elif lookup(dtype).itemsize != lookup(natural).itemsize or lookup(dtype).name == "OPAQUE":
        raise TypeError(f"dtype {dtype} does not fit {natural} data (item sizes differ or unknown dtype)")
    src = ArraySource(flat)
    c = resolve(codec, dtype, level).fit(src, dtype)
    return encode_frame(src, c, dtype, shape, workers=workers, chunk_size=chunk_size)


def decompress(frame, *, framework: str = "np", workers: int = 1):
    """Decode a frame from `compress` to an array (numpy by default, or torch with framework='pt')."""
    from .formats.frame import parse_frame

    fr = parse_frame(frame)
    return from_bytes(fr.decode(workers=workers), fr.dtype, fr.shape, framework)


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
@dataclass
class Result:
    input: str
    output: str
    original_size: int
    compressed_size: int
    seconds: float
    tensors: int = 0

    @property
    def ratio(self) -> float:
        """Compressed size / original size (smaller is better)."""
        return self.compressed_size / self.original_size if self.original_size else 1.0

    @property
    def mb_per_s(self) -> float:
        return self.original_size / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def summary(self, verb: str) -> str:
        """One line for the CLI; "decompressed" reads the sizes the other way round."""
        sizes = [human_size(self.original_size), human_size(self.compressed_size)]
        ratio = "ratio"
        if verb == "decompressed":
            sizes.reverse()
            ratio = "from ratio"
        return (f"{verb} {self.input} -> {self.output}: {sizes[0]} -> {sizes[1]} ({ratio} "
                f"{100 * self.ratio:.2f} %, {self.original_size / max(self.compressed_size, 1):.3f}x) "
                f"in {self.seconds:.2f} s, {self.mb_per_s:.0f} MB/s")


def human_size(n: int) -> str:
    """Bytes as B / KiB / MiB / GiB / TiB, for summaries and model cards."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


class _HashThread(threading.Thread):
    """Hashes a file (sha256 and XXH3-64) in the background while it is being compressed
    (hashlib drops the GIL)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.hexdigest, self.xxh3, self.error = path, None, None, None
        self.start()

    def run(self) -> None:
        try:
            self.hexdigest, self.xxh3 = hash_file(self.path)
        except Exception as exc:  # noqa: BLE001  (re-raised by the caller)
            self.error = exc


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False, dynamic_ncols=True)


def compress_file(path, output=None, *, codec="auto", level: int | None = None,
                  workers: int | None = None, overwrite: bool = False, container: str = "auto",
                  chunk_size: int | None = None, progress: bool = False,
                  lossy: str | None = None, group_size: int = 128, sync: bool = False) -> Result:
    """Compress a file (safetensors, GGUF, or any file as opaque bytes) to `.nnc`, atomically.

    `lossy="int8"|"int4"|"fp8"` (safetensors only) quantizes every float matrix round-to-nearest
    per group of `group_size` values and entropy-codes the codes: the result is LOSSY (frames
    flagged, manifest records the sha256 of the dequantized file, which decompress/verify check).

    The manifest records the original's size, sha256 and XXH3-64 (read in one pass beside the
    compression). sync=True flushes the output to disk before renaming it into place.
    """
    from itertools import islice

    from .formats.frame import assemble_frame, encode_chunks, for_each, plan_frame
    from .formats.nncfile import AtomicWriter, Entry, NncWriter
    from .layout import file_pieces, piece_codec
    from .source import FileRangeSource

    path = Path(path)
    output = Path(output) if output is not None else path.with_name(path.name + ".nnc")
    if output.resolve() == path.resolve():
        raise CodecError(f"output {output} is the input file")
    if lossy is not None:
        from .quantize import SCHEMES

        if lossy not in SCHEMES:
            raise ValueError(f"lossy must be one of {', '.join(SCHEMES)}, not {lossy!r}")
        if not isinstance(group_size, int) or not 1 <= group_size <= 1 << 20:
            raise ValueError(f"group_size must be a positive integer, not {group_size!r}")
    workers = workers or default_workers()
    t0 = time.perf_counter()
    plan = file_pieces(str(path), codec, level, container)
    size = plan.size
    if lossy is not None and plan.container != "safetensors":
        raise CodecError(f"{path}: --lossy needs a safetensors input (this is {plan.container})")
    fd = os.open(path, os.O_RDONLY)
    try:
        sha = _HashThread(path)
        hasher = None
        if lossy is not None:
            from .quantize import LossySource, OrderedHasher, Quant, eligible

            hasher = OrderedHasher()
        pieces = plan.pieces
        fitted: list = [None] * len(pieces)

        def fit(i: int) -> None:
            p = pieces[i]
            c = piece_codec(p, codec, level)
            if hasher is not None and p.role == "tensor" and eligible(p.dtype, p.shape):
                c = Quant(lossy, group_size, p.dtype)
            fitted[i] = c.fit(FileRangeSource(fd, p.start, p.length), p.dtype)

        # every fit first, on all workers, largest first (a fit reads its tensor once: histograms
        # and such); fitted one by one between the frames they were a serial third of a BF16
        # model's compress time, so 2 workers compressed MiniLM only 1.3x faster than one
        for_each(fit, sorted(range(len(pieces)), key=lambda i: -pieces[i].length), workers)
        bar = _progress(size, f"compress {path.name}", progress)
        n_lossy = 0
        jobs = []
        for p, c in zip(pieces, fitted):
            src = FileRangeSource(fd, p.start, p.length)
            if hasher is not None:   # the frame writer sees the bytes the file decodes to
                n_lossy += isinstance(c, Quant)
                src = LossySource(src, p.start, hasher, c if isinstance(c, Quant) else None)
            jobs.append((plan_frame(c, p.dtype, p.shape, src.size, chunk_size=chunk_size), src))
        with AtomicWriter(output, overwrite, sync=sync) as fh:
            w = NncWriter(fh)
            # every chunk of every frame in one encoding stream, written frame by frame in order
            stream = encode_chunks(jobs, workers)
            for p, (fplan, _) in zip(pieces, jobs):
                off = w.begin_frame()
                fh.seek(off)
                st = assemble_frame(fh, fplan, islice(stream, fplan.n_chunks), bar.update)
                w.add(Entry(p.role, off, st.encoded_size, p.name, p.dtype if p.role == "tensor" else None,
                            p.shape if p.role == "tensor" else None))
            sha.join()
            if sha.error:
                raise sha.error
            extra = {"original_xxh3": sha.xxh3}
            if hasher is not None:
                extra["lossy"] = {"scheme": lossy, "group_size": group_size, "tensors": n_lossy,
                                  "decoded_sha256": hasher.hexdigest(size)}
            end = w.finish(plan.container, size, sha.hexdigest, plan.metadata, f"codec {__version__}",
                           extra=extra)
        bar.close()
    finally:
        os.close(fd)
    return Result(str(path), str(output), size, end, time.perf_counter() - t0,
                  sum(p.role == "tensor" for p in plan.pieces))


def _default_decompressed_name(path: Path) -> Path:
    if path.suffix != ".nnc":
        raise CodecError(f"{path} does not end in .nnc; pass an output path (-o)")
    return path.with_suffix("")


def decompress_file(path, output=None, *, workers: int | None = None, overwrite: bool = False,
                    progress: bool = False, sha256: bool = False, sync: bool = False) -> Result:
    """Restore the original file from `.nnc`; the whole output is checked against the manifest's
    XXH3-64 of the original (or its sha256: files written before the XXH3 was recorded, lossy
    files, or sha256=True) before it is renamed into place. sync=True also flushes the output to
    disk before the rename (durable against a power cut; costs the disk's write time)."""
    from .formats.nncfile import AtomicWriter, NncFile

    path = Path(path)
    output = Path(output) if output is not None else _default_decompressed_name(path)
    workers = workers or default_workers()
    t0 = time.perf_counter()
    with NncFile(path) as nf, AtomicWriter(output, overwrite, sync=sync) as fh:
        total, _ = _replay(nf, path, workers, progress, "decompress", fh.write, sha256)
    return Result(str(path), str(output), total, path.stat().st_size, time.perf_counter() - t0)


_MAX_PENDING = 8                # decoded chunks waiting for the writer (or sha256) at most,
_MAX_PENDING_BYTES = 32 << 20   # and their bytes (beyond one chunk)


def _replay(nf, path: Path, workers: int, progress: bool, verb: str, sink, sha256: bool = False):
    """Decode every entry in order into `sink` (or nowhere), then check the size and the whole
    file's hash (checksum.whole_file_check). Returns (bytes, name of the hash checked).

    Writing runs on a background thread (file writes release the GIL), overlapping with the
    decoding of the next chunks; so does sha256 on a thread of its own (hashlib releases the GIL;
    at ~1.8 GB/s it is the slowest of the three). XXH3 runs at memory speed on this thread.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from .formats.frame import iter_decoded_frames

    total = nf.manifest["original_size"]
    kind, want = whole_file_check(nf.manifest, sha256)
    inline = kind == "XXH3"     # memory speed: on this thread; sha256 (~1.8 GB/s) on its own
    h = Hasher() if inline else hashlib.sha256()
    update = h.update

    def frames():       # parsed as their turn comes: memory does not grow with their number
        size = 0
        for entry in nf.entries:
            frame = nf.frame(entry)
            size += frame.decoded_size
            if size > total:
                raise FormatError(f"{frame.where}: decodes past the recorded original size {total}")
            yield frame

    bar = _progress(total, f"{verb} {path.name}", progress)
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec-hash") as hasher, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec-sink") as writer:
        # chunks handed to the background threads, oldest first: a few may wait (the writer
        # runs unevenly), their bytes bounded, so memory does not grow with the file
        pending: deque = deque()
        held = 0
        # writing is CPU work too (copying into the page cache, ~3 GB/s): it gets a core of its own
        decoders = max(1, workers - 1) if sink is not None else workers
        for _, chunk in iter_decoded_frames(frames(), decoders, verify_payload=verb == "verify"):
            while pending and (len(pending) >= _MAX_PENDING or held > _MAX_PENDING_BYTES):
                n, futs = pending.popleft()
                for fut in futs:
                    fut.result()
                held -= n
            futs = []
            if inline:
                update(chunk)
            else:
                futs.append(hasher.submit(update, chunk))
            if sink is not None:
                futs.append(writer.submit(sink, chunk))
            if futs:
                pending.append((chunk.size, futs))
                held += chunk.size
            done += chunk.size
            bar.update(chunk.size)
        for _, futs in pending:
            for fut in futs:
                fut.result()
    bar.close()
    got = xxh3_hex(h.intdigest()) if inline else h.hexdigest()
    _check_original(path, done, kind, got, want, nf.manifest)
    return total, kind


def _check_original(path, size: int, kind: str, got: str, want: str, manifest: dict) -> None:
    from .errors import ChecksumError

    if size != manifest["original_size"]:
        raise FormatError(f"{path}: decoded {size} bytes, the original had {manifest['original_size']}")
    if got != want:
        what = "the dequantized output (LOSSY file)" if manifest.get("lossy") is not None else "the restored file"
        raise ChecksumError(f"{path}: {kind} of {what} is {got}, expected the recorded {want}")


@dataclass
class VerifyReport:
    path: str
    ok: bool
    frames: int = 0
    original_size: int = 0
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    check: str = "sha256"       # the whole-file hash that matched: "XXH3" or "sha256"


def verify(path, *, workers: int | None = None, progress: bool = False, sha256: bool = False) -> VerifyReport:
    """Check every checksum and decode everything, without writing. Raises the first problem.
    The whole file is checked against the original's XXH3-64 (sha256=True, or a file that does
    not record it: against its sha256)."""
    from .formats.nncfile import NncFile

    path = Path(path)
    workers = workers or default_workers()
    with NncFile(path) as nf:
        total, kind = _replay(nf, path, workers, progress, "verify", None, sha256)
        return VerifyReport(str(path), True, len(nf.entries), total, check=kind)


# --------------------------------------------------------------------------------------
# Lazy reading
# --------------------------------------------------------------------------------------
class CompressedFile:
    """`safe_open`-style reader of a `.nnc` file: reads only the frames asked for."""

    def __init__(self, path, framework: str = "np", workers: int | None = None) -> None:
        from .formats.nncfile import NncFile

        self._nf = NncFile(path)
        self.framework = framework
        self.workers = workers or default_workers()

    def keys(self) -> list[str]:
        return list(self._nf.tensors)

    def metadata(self) -> dict | None:
        return self._nf.metadata

    def __contains__(self, name: str) -> bool:
        return name in self._nf.tensors

    def __len__(self) -> int:
        return len(self._nf.tensors)

    def dtype(self, name: str) -> str:
        return self._entry(name).dtype

    def shape(self, name: str) -> list[int]:
        return list(self._entry(name).shape)

    def _entry(self, name: str):
        try:
            return self._nf.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self._nf.path}") from None

    def frame(self, name: str):
        """The parsed frame of one tensor (for the GPU decoder and the inference hook)."""
        return self._nf.frame(self._entry(name))

    def get_tensor(self, name: str, framework: str | None = None):
        fr = self.frame(name)
        raw = fr.decode(workers=self.workers)
        return from_bytes(raw, fr.dtype, fr.shape, framework or self.framework)

    def get_tensors(self, names=None, framework: str | None = None) -> dict:
        """Several tensors at once (all by default), as {name: tensor} in file order.

        Faster than a get_tensor loop with 2+ workers: every chunk of every tensor goes into one
        queue the workers share, each reading its chunk's bytes itself (a model's many small
        tensors leave a per-tensor pool idle). Memory: the tensors, plus a chunk per worker.
        """
        from .formats.frame import decode_frames

        fw = framework or self.framework
        entries = [self._entry(n) for n in names] if names is not None else list(self._nf.tensors.values())
        frames = [self._nf.frame(e) for e in entries]
        alloc = torch_aligned if fw in ("pt", "torch") else (lambda n: np.empty(n, np.uint8))
        outs = decode_frames(frames, [alloc(fr.decoded_size) for fr in frames], self.workers)
        return {e.name: from_bytes(raw, fr.dtype, fr.shape, fw) for e, fr, raw in zip(entries, frames, outs)}

    def close(self) -> None:
        self._nf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_file(path, framework: str = "np", workers: int | None = None) -> dict:
    """Every tensor of a `.nnc` file as {name: tensor}, like `safetensors.numpy.load_file`
    (`framework="pt"`: like `safetensors.torch.load_file`). Checked like every decode: each
    chunk's decoded bytes against their XXH3 (a payload's own checksum when a chunk fails)."""
    with CompressedFile(path, framework, workers) as f:
        return f.get_tensors()


def open(path, framework: str = "np", workers: int | None = None) -> CompressedFile:  # noqa: A001
    """Open a `.nnc` file for lazy reading: `keys()`, `metadata()`, `get_tensor(name)`."""
    return CompressedFile(path, framework, workers)


# --------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------
def inspect(path, *, entropy: bool = True, workers: int | None = None) -> dict:
    """A JSON-ready description of a `.nnc` file: versions, and per tensor its pipeline and sizes.

    With `entropy=True` every chunk is decoded to report the order-0 entropy of each stream
    beside the bits actually spent.
    """
    from .formats.frame import MODE_RAW
    from .formats.nncfile import NncFile
    from .stats import StreamStat

    path = Path(path)
    with NncFile(path) as nf:
        man = nf.manifest
        rows = []
        for entry in nf.entries:
            fr = nf.frame(entry)
            codec = fr.codec
            row = {
                "name": entry.name if entry.role == "tensor" else f"<{entry.role}>",
                "role": entry.role, "dtype": fr.dtype, "shape": fr.shape,
                "codec": codec.describe(), "config": fr.config["codec"],
                "lossy": fr.lossy, "chunks": fr.chunk_count,
                "raw_chunks": int((fr.index["mode"] == MODE_RAW).sum()),
                "bytes_before": fr.decoded_size, "bytes_after": entry.length,
                "ratio": entry.length / fr.decoded_size if fr.decoded_size else 1.0,
            }
            if entropy:
                streams: dict[str, StreamStat] = {}
                for i in range(fr.chunk_count):
                    out = np.empty(fr.chunk_decoded_size(i), np.uint8)
                    fr.decode_chunk(i, out, codec)
                    enc = bytes(fr.encoded_chunk(i))
                    if int(fr.index[i]["mode"]) == MODE_RAW:
                        found = [StreamStat(s.name, s.symbols, s.entropy_bits, 0)
                                 for s in codec.streams(out, codec.encode(out))]
                        found[0].spent_bits = 8 * len(enc)
                    else:
                        found = codec.streams(out, enc)
                    for s in found:
                        streams[s.name] = streams[s.name].merge(s) if s.name in streams else s
                row["streams"] = [{"name": s.name, "symbols": s.symbols,
                                   "entropy_bits": round(s.entropy_bits, 1), "spent_bits": s.spent_bits}
                                  for s in streams.values()]
            rows.append(row)
        return {
            "path": str(path), "format_version": ".".join(map(str, man["format"])),
            "written_by": man["library"], "read_by": f"codec {__version__}",
            "container": man["container"], "original_size": man["original_size"],
            "original_sha256": man["original_sha256"],
            "original_xxh3": man.get("original_xxh3"), "compressed_size": path.stat().st_size,
            "metadata": man.get("metadata"), "lossy": man.get("lossy"), "tensors": rows,
        }
