"""Where a tensor's bytes come from: memory or a byte range of a file, read a chunk at a time.

Compression never maps or loads a whole file: a file source reads the chunk it is asked
for with `os.pread`, so memory stays bounded by chunk size times workers.
"""
from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np


class TensorSource:
    """A flat run of `size` bytes; `read(offset, n)` returns a uint8 array of exactly n bytes.

    `read_scratch(offset, n)` and `iter_chunks(n)` may return arrays that the next such call on
    the same thread (the next piece) overwrites: for callers that are done with a piece before
    asking for another (a chunk's encode, a fit's pass)."""

    size: int

    def read(self, offset: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def read_scratch(self, offset: int, n: int) -> np.ndarray:
        return self.read(offset, n)

    def iter_chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for off in range(0, self.size, chunk_size):
            yield self.read_scratch(off, min(chunk_size, self.size - off))


class ArraySource(TensorSource):
    """Bytes already in memory (a numpy array of any dtype, bytes, or a memoryview)."""

    def __init__(self, data) -> None:
        if isinstance(data, np.ndarray):
            arr = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            arr = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        self._arr = arr
        self.size = int(arr.size)

    def read(self, offset: int, n: int) -> np.ndarray:
        return self._arr[offset:offset + n]

    @property
    def array(self) -> np.ndarray:
        return self._arr


class FileRangeSource(TensorSource):
    """Bytes [start, start+size) of an open file descriptor, read with pread."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd, self.start, self.size = fd, start, size

    def read(self, offset: int, n: int) -> np.ndarray:
        buf = bytearray(n)
        self._read_into(memoryview(buf), offset)
        return np.frombuffer(buf, dtype=np.uint8)

    def read_scratch(self, offset: int, n: int) -> np.ndarray:
        """read() into this thread's reused buffer: a new one per chunk cost page faults, and
        reading a model's chunks that way took half as long as encoding them."""
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 1 << 20), np.uint8)
            if n <= _SCRATCH_KEEP:      # a huge chunk's buffer is not kept for the thread's lifetime
                _scratch.buf = buf
        out = buf[:n]
        self._read_into(memoryview(out), offset)
        return out

    def _read_into(self, view: memoryview, offset: int) -> None:
        n, got = len(view), 0
        while got < n:
            k = os.preadv(self.fd, [view[got:]], self.start + offset + got)
            if k <= 0:
                raise EOFError(f"file ended at byte {self.start + offset + got}, expected {n - got} more")
            got += k


_scratch = threading.local()
_SCRATCH_KEEP = 16 << 20
