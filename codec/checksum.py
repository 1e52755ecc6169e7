"""The one checksum used everywhere in the format: XXH3-64 (seed 0), stored little-endian."""
from __future__ import annotations

import xxhash


def xxh64(data) -> int:
    """XXH3-64 of a bytes-like object (numpy arrays via their buffer, no copy)."""
    return xxhash.xxh3_64_intdigest(data)


class Hasher:
    """Incremental XXH3-64, for data that arrives in pieces."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()

    def update(self, data) -> None:
        self._h.update(data)

    def intdigest(self) -> int:
        return self._h.intdigest()


def sha256_file(path, piece: int = 8 << 20) -> str:
    """Hex sha256 of a file, read a piece at a time (hashlib releases the GIL on large pieces)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(piece):
            h.update(data)
    return h.hexdigest()
