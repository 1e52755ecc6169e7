"""Where a tensor's bytes come from: memory or a byte range of a file, read a chunk at a time.

Compression never maps or loads a whole file: a file source reads the chunk it is asked
for with `os.pread`, so memory stays bounded by chunk size times workers.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np


class TensorSource:
    """A flat run of `size` bytes; `read(offset, n)` returns a uint8 array of exactly n bytes."""

    size: int

    def read(self, offset: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def iter_chunks(self, chunk_size: int) -> Iterator[np.ndarray]:
        for off in range(0, self.size, chunk_size):
            yield self.read(off, min(chunk_size, self.size - off))


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
        view = memoryview(buf)
        got = 0
        while got < n:
            k = os.preadv(self.fd, [view[got:]], self.start + offset + got)
            if k <= 0:
                raise EOFError(f"file ended at byte {self.start + offset + got}, expected {n - got} more")
            got += k
        return np.frombuffer(buf, dtype=np.uint8)
