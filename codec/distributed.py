"""Many files and clusters: `compress_many` / `decompress_many` on a local process pool or Dask.

The work of each file is cut into small, pure tasks that run wherever the executor puts them:

compress, per input file
    plan      read the container header (safetensors / GGUF / opaque) -> pieces (offsets, dtypes)
    sha256    hash the original, sha256 and XXH3 (runs beside the encodes)
    fit       fit the codec of one big tensor, or of a batch of small ones -> JSON codec configs
    encode    one task per range of chunks of a piece: reads its byte range straight from storage
              (`os.pread`, or `fsspec` for URLs) and returns the encoded chunks
    assemble  one task per output: writes the `.nnc` to a temp name beside the output from the
              encoded chunks (Dask moves them worker to worker, never through the client),
              verifies it (full decode, the original's XXH3), then renames it into place

decompress, per `.nnc` file
    plan      validate the manifest and every frame header, pre-size a temp output file
    decode    one task per range of chunks: decode (each chunk's checksum checked) and `pwrite`
              into the temp file at its final offset (idempotent, so a retry is harmless)
    finish    XXH3 (sha256 in older files) of the temp file against the manifest, then rename

The client only sends names, offsets and codec configs, and receives small results (sizes,
errors). Outputs are byte-identical to `codec.compress_file` / `decompress_file` for the same
options: the encode step is the same pure function (`formats.frame.encode_chunk`) and the
container is written by the same `assemble_frame` and `NncWriter`.

Faults: Dask retries the tasks of a worker that died (and recomputes results it held); outputs
appear only once complete and verified; a re-run skips outputs that are already there and
valid; a file that fails is reported by name and the other files go on.
"""
from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .checksum import whole_file_check
from .errors import CodecError
from .layout import FilePlan, InputBuffer, InputFile, Piece, fs_for, is_local, local_path, file_pieces, piece_codec

log = logging.getLogger(__name__)

TASK_BYTES = 32 << 20        # decoded bytes per encode / decode task
FIT_BATCH_BYTES = 64 << 20   # small tensors are fitted together, up to this many bytes per task
_GLOB_CHARS = "*?["



# --------------------------------------------------------------------------------------
# Tasks (module-level, picklable; each opens what it reads and closes it)
# --------------------------------------------------------------------------------------
def task_plan(url: str, codec, level, container: str = "auto") -> FilePlan:
    return file_pieces(url, codec, level, container)


def task_sha256(url: str) -> tuple[str, str]:
    """(sha256, XXH3-64) of the original, as hex: the manifest records both (checksum.digests)."""
    from .checksum import digests

    def pieces():
        with InputFile(url) as r:
            off = 0
            while off < r.size:
                data = r.pread(min(8 << 20, r.size - off), off)
                if not data:
                    raise EOFError(f"{url}: ended at byte {off}, expected {r.size}")
                yield data
                off += len(data)

    return digests(pieces())


def task_fit(url: str, pieces: list[Piece], codec, level) -> list[dict]:
    """Fit the codecs of some pieces of one file (e.g. a Huffman table); returns their configs."""
    out = []
    with InputFile(url) as r:
        for p in pieces:
            c = piece_codec(p, codec, level).fit(r.source(p.start, p.length), p.dtype)
            out.append(c.get_config())
    return out


def _plan(cfg: dict, p: Piece, chunk_size):
    from .formats.frame import plan_frame
    from .registry import get_codec

    return plan_frame(get_codec(cfg), p.dtype, p.shape, p.length, chunk_size=chunk_size)


def task_encode(url: str, segments: list, chunk_size) -> list:
    """Encode chunk ranges of some pieces of one file [(piece, codec config, i0, i1), ...],
    reading only their bytes from storage; returns the encoded chunks in order."""
    from .formats.frame import encode_chunk

    out = []
    with InputFile(url) as r:
        for p, cfg, i0, i1 in segments:
            plan = _plan(cfg, p, chunk_size)
            src = r.source(p.start, p.length)
            out.extend(encode_chunk(plan, src, i) for i in range(i0, i1))
    return out


def _tmp_name(out: Path, tag: str) -> Path:
    # deterministic, so a retried task overwrites its own leftovers instead of adding new ones
    return out.with_name(f".{out.name}.{tag}.tmp")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise CodecError(f"{out} exists (use overwrite=True / --force to replace it)")
    os.replace(tmp, out)


def task_assemble(out: str, plan: FilePlan, cfgs: list[dict], chunk_size, overwrite: bool, sha: tuple[str, str],
                  *ranges) -> dict:
    """Write one `.nnc` from its encoded chunk ranges, verify it, rename it into place."""
    from .api import verify
    from .formats.frame import assemble_frame
    from .formats.nncfile import Entry, NncWriter

    t0 = time.perf_counter()
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out_p, "compress")
    from itertools import islice

    chunks = (c for r in ranges for c in r)
    try:
        with open(tmp, "w+b") as fh:
            w = NncWriter(fh)
            for p, cfg in zip(plan.pieces, cfgs):
                fp = _plan(cfg, p, chunk_size)
                mine = list(islice(chunks, fp.n_chunks))
                off = w.begin_frame()
                fh.seek(off)
                st = assemble_frame(fh, fp, mine)
                w.add(Entry(p.role, off, st.encoded_size, p.name,
                            p.dtype if p.role == "tensor" else None, p.shape if p.role == "tensor" else None))
            end = w.finish(plan.container, plan.size, sha[0], plan.metadata, f"codec {__version__}",
                           extra={"original_xxh3": sha[1]})
            fh.flush()
            os.fsync(fh.fileno())
        verify(tmp, workers=1)       # full decode + the original's XXH3 before it is visible
        _install(tmp, out_p, overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"compressed_size": end, "assemble_seconds": time.perf_counter() - t0}


@dataclass
class DecodePlan:
    url: str
    tmp: str
    original_size: int
    sha256: str       # the expected digest of the whole output, by `check`
    frames: list      # (frame offset, frame length, decoded offset, chunk_size, chunk_count, where)
    check: str = "sha256"   # "XXH3" or "sha256" (checksum.whole_file_check)


def _open_nnc(url: str):
    """A NncFile over any readable URL (local: the normal reader; fsspec: ranged reads)."""
    from .formats.nncfile import NncFile

    if is_local(url):
        return NncFile(local_path(url)), None
    r = InputFile(url)
    nf = NncFile.__new__(NncFile)
    nf.path, nf._fd, nf.buf = Path(url.rsplit("/", 1)[-1]), None, InputBuffer(r)
    nf._read_manifest()
    return nf, r


def task_dplan(url: str, out: str) -> DecodePlan:
    nf, r = _open_nnc(url)
    try:
        man = nf.manifest
        frames, pos = [], 0
        for e in nf.entries:
            fr = nf.frame(e)   # validates the header, and dtype/shape against the manifest
            frames.append((e.offset, e.length, pos, fr.chunk_size, fr.chunk_count, fr.where))
            pos += fr.decoded_size
        if pos != man["original_size"]:
            from .errors import FormatError

            raise FormatError(f"{url}: frames decode to {pos} bytes, the original had {man['original_size']}")
    finally:
        nf.close()
        if r is not None:
            r.close()
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out_p, "decompress")
    with open(tmp, "wb") as fh:
        fh.truncate(pos)
    check, want = whole_file_check(man)
    return DecodePlan(url, str(tmp), pos, want, frames, check)


def task_decode(url: str, tmp: str, segments: list) -> int:
    """Decode chunk ranges of some frames [(frame, i0, i1), ...] (every chunk's checksum checked)
    into the temp output, each at its final offset."""
    import numpy as np

    from .formats.frame import parse_frame

    n = 0
    with InputFile(url) as r:
        buf = InputBuffer(r)
        if r.fd is not None:
            from .formats.buffer import PreadBuffer

            buf = PreadBuffer(r.fd)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for (off, length, dpos, chunk_size, _, where), i0, i1 in segments:
                fr = parse_frame(buf, off, length, where=where)
                codec = fr.codec if fr.chunk_count else None
                for i in range(i0, i1):
                    out = fr.decode_chunk(i, np.empty(fr.chunk_decoded_size(i), np.uint8), codec)
                    os.pwrite(fd, out, dpos + i * chunk_size)
                    n += out.size
        finally:
            os.close(fd)
    return n


def task_dfinish(plan: DecodePlan, out: str, overwrite: bool, *done) -> dict:
    from .errors import ChecksumError

    tmp = Path(plan.tmp)
    try:
        got = _file_digest(tmp, plan.check)
        if got != plan.sha256:
            raise ChecksumError(f"{plan.url}: {plan.check} of the restored file is {got}, expected {plan.sha256}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _install(tmp, Path(out), overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {}


def task_cleanup(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _nnc_done(out: Path, size: int) -> bool:
    """An output from an earlier run: a valid `.nnc` (footer, manifest checksum) of this input's size."""
    from .formats.nncfile import NncFile

    try:
        with NncFile(out) as nf:
            return nf.manifest["original_size"] == size
    except (CodecError, OSError, KeyError):
        return False


def task_check_done(kind: str, url: str, out: str) -> str:
    """"done" if `out` is a complete, verified result of an earlier run for `url`, "absent" if
    there is no `out`, "other" if `out` is something else."""
    out_p = Path(out)
    if not out_p.exists():
        return "absent"
    if kind == "compress":
        with InputFile(url) as r:
            size = r.size
        return "done" if _nnc_done(out_p, size) else "other"
    nf, r = _open_nnc(url)
    try:
        man = nf.manifest
        check, want = whole_file_check(man)
        if out_p.stat().st_size != man["original_size"]:
            return "other"
    finally:
        nf.close()
        if r is not None:
            r.close()
    return "done" if _file_digest(out_p, check) == want else "other"


def _file_digest(path: Path, check: str) -> str:
    from .checksum import sha256_file, xxh3_file

    return xxh3_file(path) if check == "XXH3" else sha256_file(path)


# --------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------
def _is_candidate(name: str, kind: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") and base.endswith(".tmp"):
        return False
    return base.endswith(".nnc") if kind == "decompress" else not base.endswith(".nnc")


def expand_paths(paths, kind: str = "compress", output_dir=None) -> list[tuple[str, str]]:
    """(input URL, output path) for files, folders (recursive) and globs, local or fsspec."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    pairs, seen = [], set()
    for raw in paths:
        url = os.fspath(raw)
        local = is_local(url)
        if local:
            fs, path, proto = None, local_path(url), ""
        else:
            fs, path = fs_for(url)
            proto = url.split("://", 1)[0] + "://"
        found: list[tuple[str, str]] = []   # (file path, path relative to the output folder)
        if any(ch in path for ch in _GLOB_CHARS):
            import glob as _glob

            hits = sorted(_glob.glob(path, recursive=True)) if local else sorted(fs.glob(path))
            found = [(h, h.rsplit("/", 1)[-1]) for h in hits
                     if (os.path.isfile(h) if local else fs.isfile(h)) and _is_candidate(h, kind)]
        elif (os.path.isdir(path) if local else fs.isdir(path)):
            if local:
                hits = sorted(str(p) for p in Path(path).rglob("*") if p.is_file() or p.is_symlink())
            else:
                hits = sorted(fs.find(path))
            root = path.rstrip("/") + "/"
            found = [(h, h[len(root):]) for h in hits if _is_candidate(h, kind)]
        else:
            found = [(path, path.rsplit("/", 1)[-1])]
        for f, rel in found:
            src = f if local else proto + f if not f.startswith(proto) else f
            if kind == "compress":
                rel_out = rel + ".nnc"
                beside = (f if local else f.rsplit("/", 1)[-1]) + ".nnc"
            else:
                rel_out = rel[:-4] if rel.endswith(".nnc") else rel + ".out"
                beside = (f if local else f.rsplit("/", 1)[-1])
                beside = beside[:-4] if beside.endswith(".nnc") else beside + ".out"
            if output_dir is not None:
                out = str(Path(output_dir) / rel_out)
            elif local:
                out = beside
            else:
                raise CodecError(f"{src}: pass output_dir (outputs are written to local or shared paths)")
            if src not in seen:
                seen.add(src)
                pairs.append((src, out))
    return pairs


# --------------------------------------------------------------------------------------
# Executors: one interface over a Dask client and a local process pool
# --------------------------------------------------------------------------------------
class _DaskExecutor:
    def __init__(self, client, retries: int = 2) -> None:
        self.client, self.retries = client, retries

    def submit(self, fn, *args, key: str):
        import uuid

        return self.client.submit(fn, *args, key=f"{key}-{uuid.uuid4().hex[:8]}", pure=False,
                                  retries=self.retries)

    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        pass


class _LocalExecutor:
    def __init__(self, workers: int | None) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from .api import default_workers

        self.n = workers or default_workers()
        # spawn (no fork with the client's threads around), unless __main__ cannot be re-imported
        # by a child (stdin, -c, a notebook), where fork is the only start method that works
        import sys

        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        method = "spawn" if main_file and os.path.exists(main_file) else "fork"
        self.pool = ProcessPoolExecutor(max_workers=self.n, mp_context=mp.get_context(method))

    def submit(self, fn, *args, key: str):
        from concurrent.futures import Future

        args = tuple(a.result() if isinstance(a, Future) else a for a in args)
        return self.pool.submit(fn, *args)

    def workers(self) -> int:
        return self.n

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------
# Reports and progress
# --------------------------------------------------------------------------------------
@dataclass
class FileReport:
    input: str
    output: str
    status: str = "pending"      # done | skipped | failed
    original_size: int = 0
    output_size: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ratio(self) -> float:
        return self.output_size / self.original_size if self.original_size else 1.0


@dataclass
class ManyReport:
    verb: str
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def ok(self) -> bool:
        return all(f.status in ("done", "skipped") for f in self.files)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def bytes_done(self) -> int:
        return sum(f.original_size for f in self.files if f.status == "done")

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"verb": self.verb, "ok": self.ok, "seconds": self.seconds, "workers": self.workers,
                "bytes_done": self.bytes_done, "mb_per_s": self.mb_per_s,
                "files": [dict(f.__dict__, ratio=f.ratio) for f in self.files]}

    def summary(self) -> str:
        lines = []
        for f in self.files:
            if f.status == "failed":
                lines.append(f"FAILED  {f.input}: {f.error}")
            elif f.status == "skipped":
                lines.append(f"skipped {f.input} -> {f.output} (already done and verified)")
            else:
                lines.append(f"{self.verb + 'ed':<13}{f.input} -> {f.output}: {f.original_size} -> {f.output_size} "
                             f"bytes ({100 * f.ratio:.2f} %) in {f.seconds:.2f} s")
        n = {s: sum(f.status == s for f in self.files) for s in ("done", "skipped", "failed")}
        lines.append(f"{self.verb}: {n['done']} done, {n['skipped']} skipped, {n['failed']} failed; "
                     f"{self.bytes_done / 1e6:.1f} MB in {self.seconds:.2f} s ({self.mb_per_s:.1f} MB/s) "
                     f"on {self.workers} worker threads")
        return "\n".join(lines)


class _Progress:
    def __init__(self, progress, verb: str, n_files: int) -> None:
        self.cb = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=0, desc=f"{verb} 0/{n_files} files", unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, dynamic_ncols=True)
        self.verb, self.n_files, self.files_done, self.bytes_done = verb, n_files, 0, 0
        self.t0 = time.perf_counter()

    def add_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def event(self, kind: str, nbytes: int = 0, **info) -> None:
        self.bytes_done += nbytes
        if kind == "file":
            self.files_done += 1
        if self.bar is not None:
            self.bar.set_description(f"{self.verb} {self.files_done}/{self.n_files} files", refresh=False)
            self.bar.update(nbytes)
        if self.cb is not None:
            dt = time.perf_counter() - self.t0
            self.cb({"event": kind, "files_done": self.files_done, "files": self.n_files,
                     "bytes_done": self.bytes_done, "mb_per_s": self.bytes_done / 1e6 / dt if dt else 0.0,
                     **info})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# The driver: a small event loop on the client
# --------------------------------------------------------------------------------------
def _segments(units, task_bytes: int | None = None) -> list[tuple[list, int]]:
    """Cut units [(key, n_chunks, chunk_size, decoded length), ...] into tasks of about
    `task_bytes` decoded bytes: [([(key, i0, i1), ...], bytes), ...]. Big units span several
    tasks; small ones (biases, norms) share one, so the scheduler sees few, sizeable tasks."""
    limit = task_bytes or TASK_BYTES
    tasks, cur, cur_bytes = [], [], 0
    for key, n, cs, length in units:
        i = 0
        while i < n:
            if cur_bytes >= limit:
                tasks.append((cur, cur_bytes))
                cur, cur_bytes = [], 0
            j = min(n, i + max(1, (limit - cur_bytes) // cs))
            cur.append((key, i, j))
            cur_bytes += min(length, j * cs) - i * cs
            i = j
    if cur:
        tasks.append((cur, cur_bytes))
    return tasks


def _fit_batches(pieces: list[Piece]) -> list[list[int]]:
    batches, cur, cur_bytes = [], [], 0
    for k, p in enumerate(pieces):
        if p.length >= FIT_BATCH_BYTES:
            batches.append([k])
            continue
        if cur and cur_bytes + p.length > FIT_BATCH_BYTES:
            batches.append(cur)
            cur, cur_bytes = [], 0
        cur.append(k)
        cur_bytes += p.length
    if cur:
        batches.append(cur)
    return batches


class _Job:
    def __init__(self, url: str, out: str) -> None:
        self.rep = FileReport(url, out)
        self.t0 = time.perf_counter()
        self.plan = None
        self.sha = None
        self.cfgs: list | None = None
        self.fits_left = 0
        self.ranges: list = []
        self.enc_left = 0
        self.assembling = False
        self.cleanup = None          # (fn, args) run on a worker if the file fails
        self.futures: set = set()


class _Driver:
    def __init__(self, ex, prog: _Progress) -> None:
        self.ex, self.prog = ex, prog
        self.q: queue.Queue = queue.Queue()
        self.handlers: dict = {}

    def submit(self, job: _Job, kind: str, fn, *args, then, key: str):
        fut = self.ex.submit(fn, *args, key=key)
        job.futures.add(fut)
        self.handlers[fut] = (job, kind, then)
        fut.add_done_callback(self.q.put)
        return fut

    def fail(self, job: _Job, exc: BaseException) -> None:
        if job.rep.status == "failed":
            return
        job.rep.status = "failed"
        job.rep.error = f"{type(exc).__name__}: {exc}"
        job.rep.seconds = time.perf_counter() - job.t0
        log.warning("%s: %s", job.rep.input, job.rep.error)
        for f in list(job.futures):
            f.cancel()
        job.futures.clear()
        if job.cleanup is not None:
            fn, args = job.cleanup
            fut = self.ex.submit(fn, *args, key="cleanup")
            self.handlers[fut] = (job, "cleanup", None)
            fut.add_done_callback(self.q.put)
        self.prog.event("file", status="failed", input=job.rep.input, error=job.rep.error)

    def finish(self, job: _Job, status: str) -> None:
        job.rep.status = status
        job.rep.seconds = time.perf_counter() - job.t0
        job.futures.clear()
        self.prog.event("file", status=status, input=job.rep.input)

    def run(self) -> None:
        while self.handlers:
            fut = self.q.get()
            job, kind, then = self.handlers.pop(fut, (None, None, None))
            if job is None:
                continue
            job.futures.discard(fut)
            if job.rep.status == "failed" or fut.cancelled():
                continue
            try:
                exc = fut.exception()
            except Exception as e:  # noqa: BLE001  (e.g. CancelledError from Dask)
                exc = e
            if exc is not None:
                self.fail(job, exc)
                continue
            try:
                then(job, fut)
            except Exception as e:  # noqa: BLE001
                self.fail(job, e)


def _get_executor(client, workers):
    if client is None or client == "local":
        return _LocalExecutor(workers), True
    if isinstance(client, str):
        try:
            from distributed import Client
        except ImportError:
            from .errors import BackendUnavailableError

            raise BackendUnavailableError("a Dask scheduler needs dask.distributed: "
                                          "pip install 'codec[dask]'") from None

        return _DaskExecutor(Client(client)), True
    return _DaskExecutor(client), False


def compress_many(paths, client=None, *, codec="auto", level=None, output_dir=None, overwrite: bool = False,
                  chunk_size: int | None = None, progress=True, workers: int | None = None,
                  container: str = "auto", task_bytes: int | None = None) -> ManyReport:
    """Compress files, folders (recursive) and globs, local paths or fsspec URLs, to `.nnc`.

    `client`: a `dask.distributed.Client` (or a scheduler address such as "tcp://host:8786");
    None runs on a local process pool of `workers` processes. Outputs go beside the inputs, or
    under `output_dir` (keeping paths relative to a folder given as input). Each output is
    byte-identical to `codec.compress_file(input, codec=..., level=..., chunk_size=...)`.
    Returns a report per file (done, skipped because an earlier run finished it, or failed
    with the error); one file failing does not stop the others. `progress`: True (a bar on
    stderr), False, or a callable receiving event dicts. `task_bytes`: decoded bytes per
    encode task (default 32 MiB; each task holds this much input and its encoded output).
    """
    pairs = expand_paths(paths, "compress", output_dir)
    return _run("compress", pairs, client, workers, progress, overwrite,
                dict(codec=codec, level=level, chunk_size=chunk_size, container=container, task_bytes=task_bytes))


def decompress_many(paths, client=None, *, output_dir=None, overwrite: bool = False, progress=True,
                    workers: int | None = None, task_bytes: int | None = None) -> ManyReport:
    """Restore the originals of `.nnc` files (files, folders, globs; local or fsspec URLs).

    Large files are decoded by many tasks, each writing its chunks in place into a temp file
    beside the output (so outputs must be on a path every worker can write: local or shared);
    the original's XXH3 (its sha256 in older files) is checked before the rename.
    """
    pairs = expand_paths(paths, "decompress", output_dir)
    return _run("decompress", pairs, client, workers, progress, overwrite, {"task_bytes": task_bytes})


def _run(verb: str, pairs, client, workers, progress, overwrite: bool, opts: dict) -> ManyReport:
    t0 = time.perf_counter()
    ex, owned = _get_executor(client, workers)
    n_workers = ex.workers()
    prog = _Progress(progress, verb, len(pairs))
    drv = _Driver(ex, prog)
    jobs = [_Job(u, o) for u, o in pairs]
    try:
        for k, job in enumerate(jobs):
            if overwrite:
                _start(verb, drv, job, k, overwrite, opts)
            else:
                drv.submit(job, "check", task_check_done, verb, job.rep.input, job.rep.output,
                           then=lambda j, f, k=k: _checked(verb, drv, j, k, f.result(), opts),
                           key=f"check-{k}")
        drv.run()
    finally:
        prog.close()
        if owned:
            if isinstance(ex, _DaskExecutor):
                ex.client.close()
            else:
                ex.close()
    return ManyReport(verb, [j.rep for j in jobs], time.perf_counter() - t0, n_workers)


def _checked(verb, drv, job, k, state: str, opts) -> None:
    from .errors import FileExistsCodecError

    if state == "done":
        drv.finish(job, "skipped")
    elif state == "other":
        raise FileExistsCodecError(f"{job.rep.output} exists and is not the finished output of "
                                   f"{job.rep.input} (use overwrite=True / --force to replace it)")
    else:
        _start(verb, drv, job, k, False, opts)


def _start(verb, drv, job, k, overwrite, opts):
    if verb == "compress":
        _start_compress(drv, job, k, overwrite, **opts)
    else:
        _start_decompress(drv, job, k, overwrite, **opts)


def _start_compress(drv: _Driver, job: _Job, k: int, overwrite: bool, *, codec, level, chunk_size, container,
                    task_bytes):
    url = job.rep.input

    def planned(job, fut):
        plan: FilePlan = fut.result()
        job.plan = plan
        job.rep.original_size = plan.size
        drv.prog.add_total(plan.size)
        job.cfgs = [None] * len(plan.pieces)
        batches = _fit_batches(plan.pieces)
        job.fits_left = len(batches)
        drv.submit(job, "sha", task_sha256, url, then=got_sha, key=f"sha256-{k}")
        for b, idx in enumerate(batches):
            drv.submit(job, "fit", task_fit, url, [plan.pieces[i] for i in idx], codec, level,
                       then=lambda j, f, idx=idx: fitted(j, f, idx), key=f"fit-{k}-{b}")

    def got_sha(job, fut):
        job.sha = fut.result()
        maybe_assemble(job)

    def fitted(job, fut, idx):
        for i, cfg in zip(idx, fut.result()):
            job.cfgs[i] = cfg
        job.fits_left -= 1
        if job.fits_left:
            return
        # every codec is fitted: cut the pieces into tasks of chunk ranges
        units = []
        for i, (p, cfg) in enumerate(zip(job.plan.pieces, job.cfgs)):
            fp = _plan(cfg, p, chunk_size)
            units.append(((p, cfg), fp.n_chunks, fp.chunk_size, p.length))
        for t, (segs, nbytes) in enumerate(_segments(units, task_bytes)):
            segs = [(p, cfg, i0, i1) for (p, cfg), i0, i1 in segs]
            fut = drv.submit(job, "encode", task_encode, url, segs, chunk_size,
                             then=lambda j, f, nb=nbytes: encoded(j, nb), key=f"encode-{k}-{t}")
            job.ranges.append(fut)
            job.enc_left += 1
        maybe_assemble(job)

    def encoded(job, nbytes):
        job.enc_left -= 1
        drv.prog.event("chunks", max(0, nbytes))
        maybe_assemble(job)

    def maybe_assemble(job):
        if job.assembling or job.enc_left or job.sha is None or job.cfgs is None or job.fits_left:
            return
        job.assembling = True
        ranges, job.ranges = job.ranges, []   # the assemble task holds them now
        drv.submit(job, "assemble", task_assemble, job.rep.output, job.plan, job.cfgs, chunk_size,
                   overwrite, job.sha, *ranges, then=assembled, key=f"assemble-{k}")

    def assembled(job, fut):
        job.rep.output_size = fut.result()["compressed_size"]
        drv.finish(job, "done")

    drv.submit(job, "plan", task_plan, url, codec, level, container, then=planned, key=f"plan-{k}")


def _start_decompress(drv: _Driver, job: _Job, k: int, overwrite: bool, *, task_bytes):
    url = job.rep.input
    state = {"left": 0, "futs": []}

    def planned(job, fut):
        plan: DecodePlan = fut.result()
        job.plan = plan
        job.cleanup = (task_cleanup, (plan.tmp,))
        job.rep.original_size = plan.original_size
        drv.prog.add_total(plan.original_size)
        units, pos = [], plan.frames[1:] + [None]
        for frame, nxt in zip(plan.frames, pos):
            length = (nxt[2] if nxt else plan.original_size) - frame[2]
            units.append((frame, frame[4], frame[3], length))
        for t, (segs, _) in enumerate(_segments(units, task_bytes)):
            state["left"] += 1
            f = drv.submit(job, "decode", task_decode, url, plan.tmp, segs, then=decoded,
                           key=f"decode-{k}-{t}")
            state["futs"].append(f)
        if not state["left"]:
            finish_all(job)

    def decoded(job, fut):
        state["left"] -= 1
        drv.prog.event("chunks", fut.result())
        if not state["left"]:
            finish_all(job)

    def finish_all(job):
        futs, state["futs"] = state["futs"], []
        drv.submit(job, "finish", task_dfinish, job.plan, job.rep.output, overwrite, *futs,
                   then=done, key=f"finish-{k}")

    def done(job, fut):
        job.rep.output_size = job.plan.original_size
        drv.finish(job, "done")

    drv.submit(job, "plan", task_dplan, url, job.rep.output, then=planned, key=f"dplan-{k}")
