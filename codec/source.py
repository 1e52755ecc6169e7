"""Where a tensor's bytes come from: memory or a byte range of a file, read a chunk at a time.

Compression never maps or loads a whole file: a file source reads the chunk it is asked
for with `os.pread`, so memory stays bounded by chunk size times workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .formats.buffer import ThreadScratch, pread_into


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
        """read() into this thread's reused buffer (formats.buffer.ThreadScratch)."""
        view = _scratch.get(n)
        self._read_into(view, offset)
        return np.frombuffer(view, dtype=np.uint8)

    def _read_into(self, view: memoryview, offset: int) -> None:
        got = pread_into(self.fd, view, self.start + offset)
        if got < len(view):
            raise EOFError(f"file ended at byte {self.start + offset + got}, expected {len(view) - got} more")


_scratch = ThreadScratch()
