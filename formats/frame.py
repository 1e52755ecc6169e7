"""Frames: one tensor or data object, chunked, checksummed, self-describing (SPEC.md section 2).

Writing streams chunks through a thread pool into a seekable file object and patches the
header at the end, so memory is bounded by chunk size times workers. Reading validates the
header checksum before trusting any field, then every section against the frame's bounds.
"""
from __future__ import annotations

import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Callable, Iterator

import numpy as np

from ..checksum import Hasher, xxh64
from ..errors import ChecksumError, FormatError, TruncatedError, UnsupportedVersionError
from ..registry import get_codec
from .buffer import as_buffer

FRAME_MAGIC = b"NNCF"
VERSION = (1, 1)          # the newest version read; writers use 1.1 only for 1.1 features
FIXED = struct.Struct("<4sBBHQQIIHBB")  # magic, major, minor, flags, decoded, chunk_size, chunks, cfg_len, n_sec, id_len, reserved
DIR_ENTRY = struct.Struct("<HHIQQQ")    # type, flags, reserved, offset, length, checksum
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u8"), ("checksum", "<u8"),
                        ("mode", "u1"), ("reserved", "u1", (7,))])

FLAG_LOSSY = 0x0001
FLAG_PACKED_CONFIG = 0x0002   # 1.1: the config is a zstd frame with the built-in dictionary (metapack)
KNOWN_FLAGS = FLAG_LOSSY | FLAG_PACKED_CONFIG
SECTION_MUST_UNDERSTAND = 0x0001

SEC_CHUNK_INDEX = 1
SEC_PAYLOAD = 2
SEC_CODER_TABLES = 3
SEC_GPU_SYNC = 4
KNOWN_SECTIONS = {SEC_CHUNK_INDEX: "chunk index", SEC_PAYLOAD: "payload",
                  SEC_CODER_TABLES: "coder tables", SEC_GPU_SYNC: "gpu sync index"}

MODE_CODED = 0
MODE_RAW = 1

MAX_CONFIG = 1 << 20          # 1 MiB of JSON is far beyond any real config
MAX_SECTIONS = 16
MAX_CHUNK_SIZE = 1 << 28      # 256 MiB: bounds the memory one chunk can ask for
MAX_ID = 64
DEFAULT_CHUNK_SIZE = 1 << 20


@dataclass
class FrameStats:
    decoded_size: int = 0
    encoded_size: int = 0
    raw_chunks: int = 0
    chunks: int = 0


@dataclass
class Section:
    type: int
    flags: int
    offset: int   # from the frame start
    length: int
    checksum: int


@dataclass
class Frame:
    """A parsed, validated frame header; decoding reads the payload lazily from `buf`."""

    buf: object              # the whole container (memoryview or PreadBuffer) (file map or bytes); frame at `base`
    base: int
    length: int
    where: str               # for error messages, e.g. "tensor 'w' (frame 3)"
    flags: int
    decoded_size: int
    chunk_size: int
    chunk_count: int
    codec_id: str
    config: dict
    sections: dict[int, Section] = field(default_factory=dict)
    _index: np.ndarray | None = None
    _cols: tuple | None = None
    _decoder: object = None

    # -- fields of the config ---------------------------------------------------------
    @property
    def dtype(self) -> str:
        return self.config.get("dtype", "U8")

    @property
    def shape(self) -> list[int]:
        return self.config.get("shape", [self.decoded_size])

    @property
    def lossy(self) -> bool:
        return bool(self.flags & FLAG_LOSSY)

    @property
    def codec(self):
        return get_codec(self.config["codec"])

    # -- sections ----------------------------------------------------------------------
    def section_bytes(self, sec_type: int, verify: bool = True) -> memoryview:
        sec = self.sections.get(sec_type)
        if sec is None:
            raise FormatError(f"{self.where}: missing {KNOWN_SECTIONS.get(sec_type, sec_type)} section")
        data = self.buf[self.base + sec.offset:self.base + sec.offset + sec.length]
        if verify and xxh64(data) != sec.checksum:
            raise ChecksumError(f"{self.where}: {KNOWN_SECTIONS.get(sec_type, sec_type)} section checksum "
                                f"mismatch at byte {self.base + sec.offset}")
        return data

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = _parse_index(self)
        return self._index

    def chunk_decoded_size(self, i: int) -> int:
        return min(self.chunk_size, self.decoded_size - i * self.chunk_size)

    def _columns(self):
        """(offsets, sizes, checksums, modes) of the chunk index as Python lists (cached)."""
        cols = self._cols
        if cols is None:
            idx = self.index
            cols = self._cols = (idx["offset"].tolist(), idx["size"].tolist(), idx["checksum"].tolist(),
                                 idx["mode"].tolist())
        return cols

    def encoded_chunk(self, i: int) -> memoryview:
        offs, sizes, _, _ = self._columns()
        start = self.base + self.sections[SEC_PAYLOAD].offset + offs[i]
        return self.buf[start:start + sizes[i]]

    # -- decoding ----------------------------------------------------------------------
    def decode_chunk(self, i: int, out: np.ndarray, codec=None) -> np.ndarray:
        """Decode chunk i into `out` (uint8, its decoded size) and verify its checksum."""
        offs, sizes, csums, modes = self._columns()
        start = self.base + self.sections[SEC_PAYLOAD].offset + offs[i]
        view = getattr(self.buf, "view", None)      # a file: into a reused buffer (no new bytes)
        enc = view(start, start + sizes[i]) if view is not None else self.buf[start:start + sizes[i]]
        if modes[i] == MODE_RAW:
            if len(enc) != out.size:
                raise FormatError(f"{self._chunk_where(i)}: raw chunk holds {len(enc)} bytes, expected {out.size}")
            out[:] = np.frombuffer(enc, dtype=np.uint8)
        else:
            try:
                (codec or self.codec).decode(enc, out)
            except FormatError as exc:
                raise type(exc)(f"{self._chunk_where(i)}: {exc}") from None
            except (ValueError, IndexError, OverflowError, MemoryError) as exc:
                raise FormatError(f"{self._chunk_where(i)}: undecodable ({type(exc).__name__}: {exc})") from None
        got = xxh64(out)
        if got != csums[i]:
            raise ChecksumError(f"{self._chunk_where(i)}: checksum of decoded bytes is {got:016x}, "
                                f"expected {csums[i]:016x}")
        return out

    def _chunk_where(self, i: int) -> str:
        return f"{self.where}, chunk {i} (payload byte {self._columns()[0][i]})"

    def verify_section(self, sec_type: int, piece: int = 16 << 20) -> None:
        """Check a section's checksum reading it a piece at a time (payloads can be huge)."""
        sec = self.sections[sec_type]
        h = Hasher()
        start = self.base + sec.offset
        view = getattr(self.buf, "view", None)     # a file: 1 MiB at a time into a reused buffer
        if view is not None:
            piece = min(piece, 1 << 20)
        for off in range(0, sec.length, piece):
            a, b = start + off, start + min(sec.length, off + piece)
            h.update(view(a, b) if view is not None else self.buf[a:b])
        if h.intdigest() != sec.checksum:
            raise ChecksumError(f"{self.where}: {KNOWN_SECTIONS.get(sec_type, sec_type)} section checksum "
                                f"mismatch (section at byte {start}, {sec.length} bytes)")

    def iter_decoded(self, workers: int = 1, verify_payload: bool = True) -> Iterator[np.ndarray]:
        """Yield decoded chunks in order; at most ~2*workers chunks are held at once. The payload
        checksum is checked first, or (verify_payload=False) only when a chunk fails, as in
        decode_frames."""
        for _, chunk in iter_decoded_frames([self], workers, verify_payload):
            yield chunk

    def decode(self, out: np.ndarray | None = None, workers: int = 1) -> np.ndarray:
        """Decode the whole frame into a flat uint8 array."""
        return decode_frames([self], None if out is None else [out], workers)[0]

    def decoder(self):
        """The frame's codec, built once (building parses its config: code tables and such)."""
        c = self._decoder
        if c is None:
            c = self._decoder = self.codec
        return c


def iter_decoded_frames(frames, workers: int = 1, verify_payload: bool = True) -> Iterator[tuple[Frame, np.ndarray]]:
    """Yield (frame, decoded chunk) for every chunk of every frame, in order, with up to `workers`
    threads decoding ahead (at most ~2*workers chunks held at once). One stream over all frames:
    per frame, a model's many small frames each drained the look-ahead and left threads idle
    (decompressing MiniLM with 2 workers was slower than with one). A frame's payload checksum
    is checked before its chunks (verify_payload), or only when one of them fails, so that damage
    is reported as such (a ChecksumError)."""
    steps = ((fr, i) for fr in frames
             for i in chain([-1] if verify_payload and SEC_PAYLOAD in fr.sections else [], range(fr.chunk_count)))
    # hashing a payload runs at ~25 GB/s, decoding at ~3: weighed as an eighth of its bytes
    tasks = _tasks(steps, lambda t: t[0].sections[SEC_PAYLOAD].length // 8 if t[1] < 0 else t[0].chunk_decoded_size(t[1]))

    def one(fr, i):
        if i < 0:
            fr.verify_section(SEC_PAYLOAD)
            return None
        try:
            return fr.decode_chunk(i, np.empty(fr.chunk_decoded_size(i), np.uint8), fr.decoder())
        except (FormatError, ValueError):
            if not verify_payload and SEC_PAYLOAD in fr.sections:
                fr.verify_section(SEC_PAYLOAD)
            raise

    for task, chunks in _ordered_map(lambda task: (task, [one(fr, i) for fr, i in task]), tasks, workers):
        for (fr, _), chunk in zip(task, chunks):
            if chunk is not None:
                yield fr, chunk


_TASK_BYTES = 1 << 20


def _tasks(items, size_of: Callable) -> Iterator[list]:
    """Consecutive items grouped into tasks of at least _TASK_BYTES (by size_of) where items are
    small: a pool task costs tens of microseconds of queueing and wake-ups, as much as coding a
    small chunk. Lazy, as its input may be."""
    task, size = [], 0
    for it in items:
        task.append(it)
        size += size_of(it)
        if size >= _TASK_BYTES:
            yield task
            task, size = [], 0
    if task:
        yield task


def decode_frames(frames, outs=None, workers: int = 1, verify_payload: bool = False) -> list[np.ndarray]:
    """Decode several frames at once (SPEC 2.3 for each): every chunk of every frame goes into one
    queue that `workers` threads share, largest first. Per-frame pools leave a thread idle on
    every small frame (a model has a few large tensors and many small ones): with 2 threads,
    decoding MiniLM frame by frame scaled 1.2x, all its frames at once 1.6x to 1.8x.

    Every chunk's decoded bytes are checked against their XXH3. A frame's payload checksum is
    checked when one of its chunks fails, so that damage is reported as such (a ChecksumError),
    or up front with `verify_payload` (`codec verify`); decoders are safe on any bytes, and a
    payload whose chunks all decode to their checksums decodes to what was written.

    `outs` (optional) are uint8 arrays of each frame's decoded size.
    """
    frames = list(frames)
    if outs is None:
        outs = [np.empty(fr.decoded_size, np.uint8) for fr in frames]
    else:
        outs = list(outs)
        if len(outs) != len(frames):
            raise ValueError(f"{len(outs)} outputs for {len(frames)} frames")
        for fr, out in zip(frames, outs):
            if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 1 \
                    or out.size != fr.decoded_size:
                raise ValueError(f"out must be flat uint8 of {fr.decoded_size} bytes")
    tasks = []
    for fr, out in zip(frames, outs):
        if verify_payload and SEC_PAYLOAD in fr.sections:
            # hashing runs at ~25 GB/s, decoding at ~3: weigh it so it sorts among chunks of like cost
            tasks.append((fr.sections[SEC_PAYLOAD].length // 8, fr, -1, out))
        for i in range(fr.chunk_count):
            s = i * fr.chunk_size
            tasks.append((fr.chunk_decoded_size(i), fr, i, out[s:s + fr.chunk_decoded_size(i)]))
    tasks.sort(key=lambda t: -t[0])

    def one(task) -> None:
        _, fr, i, out = task
        if i < 0:
            fr.verify_section(SEC_PAYLOAD)
            return
        try:
            fr.decode_chunk(i, out, fr.decoder())
        except (FormatError, ValueError):
            # name damage to the payload as such, however the chunk failed
            if not verify_payload and SEC_PAYLOAD in fr.sections:
                fr.verify_section(SEC_PAYLOAD)
            raise

    for_each(one, tasks, workers)
    return outs


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_in_pool = threading.local()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool per worker count: frames are often small, and starting threads for
    each one costs more than decoding it."""
    pool = _pools.get(workers)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(workers)
            if pool is None:
                pool = _pools[workers] = ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix=f"codec-frame{workers}",
                    initializer=setattr, initargs=(_in_pool, "active", True))
    return pool


def for_each(fn: Callable, items, workers: int) -> None:
    """fn(item) for every item, on up to `workers` threads (the caller's among them), in no set
    order; the first error is raised once all threads have stopped. Give the items largest first.

    The threads share one deque of the items instead of taking a pool task each: a task costs
    tens of microseconds of queueing and wake-ups, as much as decoding a small chunk. The caller
    takes items from the large end and the other threads from the small end: a small chunk is
    mostly Python (GIL) time, and taken early it overlaps the long GIL-free decodes, where at the
    end it would queue for the GIL behind the other threads' small chunks.
    """
    items = list(items)
    n = min(workers, len(items))
    if n <= 1 or getattr(_in_pool, "active", False):
        for it in items:
            fn(it)
        return
    from collections import deque

    shared = deque(items)       # pop() and popleft() are atomic under the GIL
    failed: list[BaseException] = []

    def drain(take) -> None:
        try:
            while not failed:
                try:
                    it = take()
                except IndexError:
                    return
                fn(it)
        except BaseException as e:   # noqa: BLE001 - re-raised in the caller
            failed.append(e)

    pool = _pool(workers)
    futs = [pool.submit(drain, shared.pop) for _ in range(n - 1)]
    drain(shared.popleft)
    for f in futs:
        f.result()
    if failed:
        raise failed[0]


def _ordered_map(fn: Callable, items, workers: int) -> Iterator:
    """map() over a thread pool with bounded look-ahead, results in order. `items` may be a
    lazy iterable: it is read only as far as the look-ahead (a file's frames are parsed as
    their turn comes, so memory does not grow with their number)."""
    it = iter(items)
    # inline when there is nothing to overlap, or when called from one of the pool's own threads
    # (waiting there on tasks queued behind us could deadlock)
    if workers <= 1 or getattr(_in_pool, "active", False):
        for x in it:
            yield fn(x)
        return
    from collections import deque

    first = list(islice(it, 2))
    if len(first) <= 1:
        for x in first:
            yield fn(x)
        return
    it = chain(first, it)
    pool = _pool(workers)
    pending: deque = deque()
    try:
        for x in it:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 2 * workers:
                break
        while pending:
            fut = pending.popleft()
            for nxt in islice(it, 1):
                pending.append(pool.submit(fn, nxt))
            yield fut.result()
    finally:
        # on an error or an abandoned generator: drop what has not started, wait for the rest
        # (they may write into buffers the caller is about to release)
        for f in pending:
            f.cancel()
        for f in pending:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:
                    pass


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------
def parse_frame(buf, base: int = 0, length: int | None = None, where: str = "frame") -> Frame:
    """Parse and validate the frame at `buf[base:base+length]`."""
    buf = as_buffer(buf)
    if length is None:
        length = len(buf) - base
    if base < 0 or length < 0 or base + length > len(buf):
        raise TruncatedError(f"{where}: frame [{base}, {base + length}) lies outside the {len(buf)}-byte input")
    if length < FIXED.size:
        raise TruncatedError(f"{where}: {length} bytes is shorter than a frame header ({FIXED.size} bytes)")
    (magic, major, minor, flags, decoded, chunk_size, chunks, cfg_len, n_sec, id_len,
     reserved) = FIXED.unpack(buf[base:base + FIXED.size])
    if magic != FRAME_MAGIC:
        raise FormatError(f"{where}: bad magic {bytes(magic)!r} at byte {base}, expected {FRAME_MAGIC!r}")
    if major != VERSION[0]:
        raise UnsupportedVersionError(f"{where}: format version {major}.{minor} is not supported "
                                      f"(this library reads {VERSION[0]}.x)")
    header_len = FIXED.size + id_len + cfg_len + n_sec * DIR_ENTRY.size + 8
    if cfg_len > MAX_CONFIG or n_sec > MAX_SECTIONS or id_len > MAX_ID or header_len > length:
        raise TruncatedError(f"{where}: header of {header_len} bytes (config {cfg_len}, {n_sec} sections) "
                             f"does not fit in the {length}-byte frame at byte {base}")
    head = buf[base:base + header_len]
    stored = struct.unpack_from("<Q", head, header_len - 8)[0]
    actual = xxh64(head[:header_len - 8])
    if stored != actual:
        raise ChecksumError(f"{where}: header checksum mismatch at byte {base + header_len - 8} "
                            f"(stored {stored:016x}, computed {actual:016x})")
    # From here on the header is what the writer wrote; validate its meaning.
    if flags & ~KNOWN_FLAGS or reserved:
        raise UnsupportedVersionError(f"{where}: reserved header bits set (flags {flags:#06x}, reserved {reserved})")
    if minor > VERSION[1]:
        raise UnsupportedVersionError(f"{where}: format version {major}.{minor} is newer than {VERSION[0]}.{VERSION[1]}")
    if bool(flags & FLAG_PACKED_CONFIG) != (minor == 1):
        # 1.1 frames are exactly those with a packed config, so no header bit is meaningless
        raise UnsupportedVersionError(f"{where}: flags {flags:#06x} do not match format {major}.{minor} "
                                      f"(the packed-config bit is reserved in 1.0 and required in 1.1)")
    cfg_bytes = bytes(head[FIXED.size + id_len:FIXED.size + id_len + cfg_len])
    if flags & FLAG_PACKED_CONFIG:
        from .metapack import unpack

        cfg_bytes = unpack(cfg_bytes, MAX_CONFIG, f"{where}: header config")
    try:
        codec_id = bytes(head[FIXED.size:FIXED.size + id_len]).decode("ascii")
        config = json.loads(cfg_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{where}: header config is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("codec"), dict) \
            or config["codec"].get("id") != codec_id:
        raise FormatError(f"{where}: config does not name codec {codec_id!r}")
    if chunks:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise FormatError(f"{where}: chunk size {chunk_size} outside (0, {MAX_CHUNK_SIZE}]")
        if chunks != -(-decoded // chunk_size):
            raise FormatError(f"{where}: {chunks} chunks cannot hold {decoded} bytes of {chunk_size}")
    elif decoded:
        raise FormatError(f"{where}: {decoded} decoded bytes but no chunks")
    frame = Frame(buf, base, length, where, flags, decoded, chunk_size, chunks, codec_id, config)
    pos = FIXED.size + id_len + cfg_len
    spans = []
    for k in range(n_sec):
        typ, sflags, sres, off, slen, csum = DIR_ENTRY.unpack_from(head, pos + k * DIR_ENTRY.size)
        if sres or sflags & ~SECTION_MUST_UNDERSTAND:
            raise UnsupportedVersionError(f"{where}: section {k} has reserved bits set")
        if off < header_len or slen > length or off > length - slen:
            raise FormatError(f"{where}: section {k} ({KNOWN_SECTIONS.get(typ, typ)}) at [{off}, {off + slen}) "
                              f"lies outside the frame body [{header_len}, {length})")
        if typ in frame.sections:
            raise FormatError(f"{where}: section type {typ} appears twice")
        if typ not in KNOWN_SECTIONS:
            if sflags & SECTION_MUST_UNDERSTAND:
                raise UnsupportedVersionError(f"{where}: unknown must-understand section type {typ}")
            continue
        spans.append((off, off + slen, typ))
        frame.sections[typ] = Section(typ, sflags, off, slen, csum)
    spans.sort()
    for (a0, a1, ta), (b0, b1, tb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FormatError(f"{where}: sections {ta} and {tb} overlap")
    if chunks and (SEC_CHUNK_INDEX not in frame.sections or SEC_PAYLOAD not in frame.sections):
        raise FormatError(f"{where}: frame with {chunks} chunks lacks its chunk index or payload")
    return frame


def _parse_index(frame: Frame) -> np.ndarray:
    if not frame.chunk_count:
        return np.zeros(0, INDEX_DTYPE)
    raw = frame.section_bytes(SEC_CHUNK_INDEX)
    if len(raw) != frame.chunk_count * INDEX_DTYPE.itemsize:
        raise FormatError(f"{frame.where}: chunk index holds {len(raw)} bytes, expected "
                          f"{frame.chunk_count} x {INDEX_DTYPE.itemsize}")
    idx = np.frombuffer(raw, INDEX_DTYPE)
    payload_len = frame.sections[SEC_PAYLOAD].length
    if frame.chunk_count <= 16:   # same checks without numpy's per-call overhead
        pos = 0
        last = frame.decoded_size - (frame.chunk_count - 1) * frame.chunk_size
        for i in range(frame.chunk_count):
            off, size, mode = struct.unpack_from("<QQ8xB", raw, i * INDEX_DTYPE.itemsize)
            dec = frame.chunk_size if i < frame.chunk_count - 1 else last
            reserved = bytes(raw[i * INDEX_DTYPE.itemsize + 25:(i + 1) * INDEX_DTYPE.itemsize])
            if (off != pos or size > dec or mode > MODE_RAW or any(reserved)
                    or (mode == MODE_RAW and size != dec)):
                raise FormatError(f"{frame.where}: chunk {i} index entry is invalid (offset {off}, "
                                  f"size {size}, decoded {dec}, mode {mode})")
            pos += size
        if pos != payload_len:
            raise FormatError(f"{frame.where}: chunks cover {pos} payload bytes, payload holds {payload_len}")
        return idx
    sizes = idx["size"].astype(np.uint64)
    expected_off = np.concatenate([[0], np.cumsum(sizes, dtype=np.uint64)[:-1]]).astype(np.uint64)
    dec = np.full(frame.chunk_count, frame.chunk_size, np.uint64)
    dec[-1] = frame.decoded_size - (frame.chunk_count - 1) * frame.chunk_size
    bad = np.flatnonzero((idx["offset"] != expected_off) | (sizes > dec) | (idx["mode"] > MODE_RAW)
                         | idx["reserved"].any(axis=1) | ((idx["mode"] == MODE_RAW) & (sizes != dec)))
    if bad.size:
        i = int(bad[0])
        raise FormatError(f"{frame.where}: chunk {i} index entry is invalid (offset {int(idx['offset'][i])}, "
                          f"size {int(sizes[i])}, decoded {int(dec[i])}, mode {int(idx['mode'][i])})")
    if int(sizes.sum()) != payload_len:
        raise FormatError(f"{frame.where}: chunks cover {int(sizes.sum())} payload bytes, payload holds {payload_len}")
    return idx


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def _header_bytes(flags, decoded, chunk_size, chunks, codec_id: bytes, cfg: bytes,
                  directory: list[Section]) -> bytes:
    minor = 1 if flags & FLAG_PACKED_CONFIG else 0      # 1.0 bytes unless a 1.1 feature is used
    parts = [FIXED.pack(FRAME_MAGIC, VERSION[0], minor, flags, decoded, chunk_size, chunks,
                        len(cfg), len(directory), len(codec_id), 0), codec_id, cfg]
    parts += [DIR_ENTRY.pack(s.type, s.flags, 0, s.offset, s.length, s.checksum) for s in directory]
    head = b"".join(parts)
    return head + struct.pack("<Q", xxh64(head))


@dataclass
class FramePlan:
    """Everything about a frame that is fixed before its chunks are encoded.

    `write_frame` = `plan_frame` + `encode_chunk` for every chunk (in any order, on any machine:
    each depends only on the plan and the source bytes) + `assemble_frame` in chunk order.
    """

    codec: object
    size: int
    chunk_size: int
    n_chunks: int
    flags: int
    codec_id: bytes
    config: bytes
    extra_types: tuple

    def chunk_range(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(self.chunk_size, self.size - start)


@dataclass
class EncodedChunk:
    data: bytes          # what goes into the payload (coded bytes, or the raw bytes; any buffer)
    mode: int
    checksum: int        # XXH3-64 of the decoded bytes
    decoded_size: int
    coded: bytes | None  # kept for codecs with extra sections (None if stored raw)


def plan_frame(codec, dtype: str, shape, size: int, *, chunk_size: int | None = None,
               extra_config: dict | None = None) -> FramePlan:
    align = max(1, codec.chunk_alignment())
    chunk_size = chunk_size or getattr(codec, "default_chunk_size", DEFAULT_CHUNK_SIZE)
    chunk_size = max(align, chunk_size // align * align)
    if chunk_size > MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} exceeds {MAX_CHUNK_SIZE}")
    config = {"codec": codec.get_config(), "dtype": dtype, "shape": [int(s) for s in shape]}
    if extra_config:
        config.update(extra_config)
    flags = 0 if codec.lossless else FLAG_LOSSY
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    if getattr(codec, "packed_config", False):
        from .metapack import pack

        packed = pack(blob)
        if len(packed) < len(blob):
            blob, flags = packed, flags | FLAG_PACKED_CONFIG
    return FramePlan(codec, size, chunk_size, -(-size // chunk_size) if size else 0,
                     flags, codec.codec_id.encode("ascii"), blob,
                     tuple(getattr(codec, "extra_section_types", ())))


def encode_chunk(plan: FramePlan, source, i: int) -> EncodedChunk:
    """Encode chunk i; a chunk whose coding does not shrink it is stored raw."""
    start, n = plan.chunk_range(i)
    raw = source.read_scratch(start, n)     # encoded (or copied, if stored raw) before the next read
    # a codec may offer encode_buffer: the same bytes as encode, as a uint8 array (saves a copy
    # into a fresh bytes object, which costs page faults on every chunk)
    encode = getattr(plan.codec, "encode_buffer", None) or plan.codec.encode
    enc = encode(raw) if raw.size else b""
    keep = enc if plan.extra_types else None
    if len(enc) >= raw.size:
        return EncodedChunk(raw.tobytes(), MODE_RAW, xxh64(raw), n, None)
    return EncodedChunk(enc, MODE_CODED, xxh64(raw), n, keep)


def assemble_frame(fh, plan: FramePlan, chunks, progress: Callable[[int], None] | None = None) -> FrameStats:
    """Write the frame at fh's position from its encoded chunks, given in chunk order.

    Chunks are written as they arrive (memory stays bounded) and the header is patched at the
    end; leaves fh at the frame's end. Codecs with extra sections keep their coded chunks.
    """
    header_len = FIXED.size + len(plan.codec_id) + len(plan.config) + \
        (2 + len(plan.extra_types)) * DIR_ENTRY.size + 8
    start = fh.tell()
    index = np.zeros(plan.n_chunks, INDEX_DTYPE)
    payload_off = header_len + index.nbytes
    fh.seek(start + payload_off)
    stats = FrameStats(decoded_size=plan.size, chunks=plan.n_chunks)
    payload_hash = Hasher()
    pos, count = 0, 0
    kept: list[bytes | None] = []
    for i, ch in enumerate(chunks):
        if ch.decoded_size != plan.chunk_range(i)[1]:
            raise ValueError(f"chunk {i} decodes to {ch.decoded_size} bytes, the plan says {plan.chunk_range(i)[1]}")
        fh.write(ch.data)
        payload_hash.update(ch.data)
        index[i]["offset"], index[i]["size"] = pos, len(ch.data)
        index[i]["checksum"], index[i]["mode"] = ch.checksum, ch.mode
        stats.raw_chunks += ch.mode == MODE_RAW
        pos += len(ch.data)
        count += 1
        if plan.extra_types:
            kept.append(ch.coded if ch.mode == MODE_CODED else None)
        if progress:
            progress(ch.decoded_size)
    if count != plan.n_chunks:
        raise ValueError(f"got {count} chunks, the plan has {plan.n_chunks}")
    directory = [Section(SEC_CHUNK_INDEX, SECTION_MUST_UNDERSTAND, header_len, index.nbytes, xxh64(index)),
                 Section(SEC_PAYLOAD, SECTION_MUST_UNDERSTAND, payload_off, pos, payload_hash.intdigest())]
    end = payload_off + pos
    if plan.extra_types:
        sizes = [plan.chunk_range(i)[1] for i in range(plan.n_chunks)]
        sections = plan.codec.extra_sections(kept, sizes)
        if sorted(sections) != sorted(plan.extra_types):
            raise RuntimeError(f"codec {plan.codec.codec_id} returned sections {sorted(sections)}, "
                               f"declared {sorted(plan.extra_types)}")
        for typ in sorted(sections):
            blob = sections[typ]
            directory.append(Section(typ, 0 if typ == SEC_GPU_SYNC else SECTION_MUST_UNDERSTAND,
                                     end, len(blob), xxh64(blob)))
            fh.write(blob)
            end += len(blob)
    head = _header_bytes(plan.flags, plan.size, plan.chunk_size, plan.n_chunks, plan.codec_id,
                         plan.config, directory)
    fh.seek(start)
    fh.write(head)
    fh.write(index.tobytes())
    fh.seek(start + end)
    stats.encoded_size = end
    return stats


def write_frame(fh, source, codec, dtype: str, shape, *, chunk_size: int | None = None,
                workers: int = 1, progress: Callable[[int], None] | None = None,
                extra_config: dict | None = None) -> FrameStats:
    """Encode `source` (a TensorSource) with a fitted `codec` into the seekable file `fh`.

    Writes at fh's current position; leaves it at the frame's end. Chunks are encoded by a
    thread pool with bounded look-ahead.
    """
    plan = plan_frame(codec, dtype, shape, source.size, chunk_size=chunk_size, extra_config=extra_config)
    encoded = _ordered_map(lambda i: encode_chunk(plan, source, i), range(plan.n_chunks), workers)
    return assemble_frame(fh, plan, encoded, progress)


def encode_chunks(jobs, workers: int = 1) -> Iterator[EncodedChunk]:
    """Every chunk of several frames, jobs = [(FramePlan, TensorSource)], encoded by up to
    `workers` threads with bounded look-ahead and yielded in order: one stream over all frames
    (per frame, a model's many small frames each drained the look-ahead and left threads idle),
    in tasks of consecutive chunks of at least _TASK_BYTES where chunks are small."""
    tasks = _tasks(((plan, source, i) for plan, source in jobs for i in range(plan.n_chunks)),
                   lambda t: t[0].chunk_range(t[2])[1])
    for batch in _ordered_map(lambda task: [encode_chunk(p, src, i) for p, src, i in task], tasks, workers):
        yield from batch


def encode_frame(data, codec, dtype: str, shape, **kw) -> bytes:
    """A whole frame as bytes (for `codec.compress`)."""
    import io

    from ..source import ArraySource

    bio = io.BytesIO()
    write_frame(bio, data if hasattr(data, "read") else ArraySource(data), codec, dtype, shape, **kw)
    return bio.getvalue()
