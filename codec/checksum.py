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


def xxh3_hex(value: int) -> str:
    """The manifest's spelling of an XXH3-64: 16 lowercase hex digits."""
    return f"{value:016x}"


def sha256_file(path, piece: int = 8 << 20) -> str:
    """Hex sha256 of a file, read a piece at a time (hashlib releases the GIL on large pieces)."""
    return hash_file(path, piece)[0]


def xxh3_file(path, piece: int = 8 << 20) -> str:
    """Hex XXH3-64 of a file (as the manifest's `original_xxh3`), read a piece at a time."""
    x = xxhash.xxh3_64()
    buf = bytearray(piece)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            x.update(view[:n])
    return xxh3_hex(x.intdigest())


def whole_file_check(manifest: dict, sha256: bool = False) -> tuple[str, str]:
    """(hash name, expected hex digest) that a restored file must match: the dequantized file's
    sha256 for a lossy file, else the original's XXH3-64 where the manifest records it (unless
    sha256=True), else the original's sha256."""
    lossy = manifest.get("lossy")
    if lossy is not None:
        return "sha256", lossy["decoded_sha256"]
    if not sha256 and "original_xxh3" in manifest:
        return "XXH3", manifest["original_xxh3"]
    return "sha256", manifest["original_sha256"]


def hash_file(path, piece: int = 8 << 20) -> tuple[str, str]:
    """(hex sha256, hex XXH3-64) of a file in one read: the manifest records both (the XXH3 is
    what readers check at memory speed; the sha256 names the original, as a Hub LFS pointer does)."""
    import hashlib

    h, x = hashlib.sha256(), xxhash.xxh3_64()
    buf = bytearray(piece)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            x.update(view[:n])
    return h.hexdigest(), xxh3_hex(x.intdigest())
