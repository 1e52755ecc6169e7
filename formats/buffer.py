"""Random access to a container's bytes without mapping the whole file.

`PreadBuffer` looks like a read-only bytes object (len, slicing) but reads each slice
with `os.pread`, so touching one tensor of a large file reads only its bytes and memory
never grows with the file size (a memory map would count every touched page as resident).
"""
from __future__ import annotations

import os
import threading

from ..errors import TruncatedError

SCRATCH_KEEP = 16 << 20      # per-thread read buffers up to this size are reused


class ThreadScratch(threading.local):
    """A byte buffer per thread, reused from read to read: a new object per chunk cost page
    faults, and reading a model's chunks that way took as long as coding them. A request past
    SCRATCH_KEEP gets a buffer of its own, freed with it (pool threads live on)."""

    def get(self, n: int) -> memoryview:
        buf = getattr(self, "buf", None)
        if buf is None or len(buf) < n:
            buf = bytearray(max(n, 1 << 20))
            if n <= SCRATCH_KEEP:
                self.buf = buf
        return memoryview(buf)[:n]


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from the file at `offset` (pread may return short reads); the bytes read,
    fewer than len(view) only at the end of the file."""
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], offset + got)
        if k <= 0:
            break
        got += k
    return got


_scratch = ThreadScratch()


class PreadBuffer:
    def __init__(self, fd: int, size: int | None = None) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size if size is None else size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("PreadBuffer supports contiguous slices only")
        start, stop, _ = key.indices(self.size)
        n = max(0, stop - start)
        data = os.pread(self.fd, n, start)
        while len(data) < n:  # pread may return short reads on some filesystems
            more = os.pread(self.fd, n - len(data), start + len(data))
            if not more:
                raise TruncatedError(f"file ended at byte {start + len(data)} while reading [{start}, {stop})")
            data += more
        return data

    def view(self, start: int, stop: int) -> memoryview:
        """Bytes [start, stop) read into this thread's scratch buffer (ThreadScratch), which the
        next view() on the same thread overwrites: for a caller that is done with them before
        asking again (a chunk's decode)."""
        mv = _scratch.get(max(0, stop - start))
        got = pread_into(self.fd, mv, start)
        if got < len(mv):
            raise TruncatedError(f"file ended at byte {start + got} while reading [{start}, {stop})")
        return mv


def as_buffer(obj):
    """bytes-like -> memoryview of bytes; PreadBuffer passes through."""
    if isinstance(obj, PreadBuffer):
        return obj
    mv = memoryview(obj)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
