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
