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


def digests(pieces, sha256: bool = True, xxh3: bool = True) -> tuple[str | None, str | None]:
    """(hex sha256, hex XXH3-64) of the concatenated byte pieces, each only if asked for: the
    manifest records both (the XXH3 is what readers check at memory speed; the sha256 names the
    original, as a Hub LFS pointer does)."""
    import hashlib

    h = hashlib.sha256() if sha256 else None
    x = xxhash.xxh3_64() if xxh3 else None
    for data in pieces:
        if h is not None:
            h.update(data)
        if x is not None:
            x.update(data)
    return (h.hexdigest() if h is not None else None), (xxh3_hex(x.intdigest()) if x is not None else None)


def file_pieces(path, piece: int = 8 << 20):
    """A file's bytes, `piece` at a time, in one reused buffer (each piece is overwritten by the next)."""
    buf = bytearray(piece)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            yield view[:n]


def sha256_file(path) -> str:
    """Hex sha256 of a file (hashlib releases the GIL on large pieces)."""
    return digests(file_pieces(path), xxh3=False)[0]


def xxh3_file(path) -> str:
    """Hex XXH3-64 of a file, as the manifest's `original_xxh3`."""
    return digests(file_pieces(path), sha256=False)[1]


def hash_file(path) -> tuple[str, str]:
    """(hex sha256, hex XXH3-64) of a file in one read."""
    return digests(file_pieces(path))


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
