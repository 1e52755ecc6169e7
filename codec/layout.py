"""Reading an input file (local path or fsspec URL) and planning its pieces.

`file_pieces` lists what `compress_file` writes as frames, in the original file's byte order:
the safetensors header and tensors, GGUF header, tensors and gaps, or one opaque run, each
with its byte range and, where the container fixes it, its codec. `piece_codec` turns a piece
into the codec that encodes it. The single-process API and the distributed runner both use
these, so a cluster run writes exactly the bytes a laptop run writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


from .errors import CodecError

# --------------------------------------------------------------------------------------
# Storage: local paths (pread) or any fsspec URL
# --------------------------------------------------------------------------------------
def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def fs_for(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


class InputFile:
    """Random access to one input: `pread` on a local file, `fsspec` ranges otherwise."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fd = None
        self.fh = None
        if is_local(url):
            self.fd = os.open(local_path(url), os.O_RDONLY)
            self.size = os.fstat(self.fd).st_size
        else:
            fs, path = fs_for(url)
            self.fh = fs.open(path, "rb")
            self.size = fs.size(path)

    def pread(self, n: int, off: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, n, off)
        self.fh.seek(off)
        return self.fh.read(n)

    def source(self, start: int, size: int):
        from .source import FileRangeSource, TensorSource

        if self.fd is not None:
            return FileRangeSource(self.fd, start, size)
        reader = self

        class _Src(TensorSource):
            def read(self_, offset: int, n: int):
                import numpy as np

                data = reader.pread(n, start + offset)
                if len(data) != n:
                    raise EOFError(f"{reader.url}: ended at byte {start + offset + len(data)}, "
                                   f"expected {n - len(data)} more")
                return np.frombuffer(data, dtype=np.uint8)

        s = _Src()
        s.size = size
        return s

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InputBuffer:
    """len() and contiguous slices over a InputFile (what the frame parser needs)."""

    def __init__(self, reader: InputFile) -> None:
        self.r = reader

    def __len__(self) -> int:
        return self.r.size

    def __getitem__(self, key) -> bytes:
        from .errors import TruncatedError

        start, stop, _ = key.indices(self.r.size)
        n = max(0, stop - start)
        data = self.r.pread(n, start)
        while len(data) < n:
            more = self.r.pread(n - len(data), start + len(data))
            if not more:
                raise TruncatedError(f"{self.r.url}: ended at byte {start + len(data)} reading [{start}, {stop})")
            data += more
        return data


# --------------------------------------------------------------------------------------
# A file's pieces: what compress_file writes as frames, in file order
# --------------------------------------------------------------------------------------
@dataclass
class Piece:
    role: str                 # header | tensor | bytes
    start: int                # byte offset in the original file
    length: int
    dtype: str
    shape: list
    name: str | None = None
    fixed: dict | None = None  # codec config chosen from the container (e.g. packed int4), or None
    zstd_level: object = "default"   # header/bytes pieces: level for zstd ("default" = the caller's)


@dataclass
class FilePlan:
    url: str
    container: str
    size: int
    metadata: dict | None
    pieces: list[Piece]


def file_pieces(url: str, codec="auto", level=None, container: str = "auto") -> FilePlan:
    """The pieces `compress_file` writes as frames, in file order, with their codec choices."""
    from .safetensors_header import looks_like_safetensors, parse_header

    with InputFile(url) as r:
        size = r.size
        prefix = r.pread(9, 0)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if container == "auto":
            from .gguf import looks_like_gguf

            if looks_like_gguf(prefix) or name.endswith(".gguf"):
                container = "gguf"
            elif name.endswith(".safetensors") or looks_like_safetensors(prefix, size):
                container = "safetensors"
            else:
                container = "bytes"
        pieces: list[Piece] = []
        metadata = None
        if container == "safetensors":
            n = int.from_bytes(prefix[:8], "little") if len(prefix) >= 8 else 0
            head = r.pread(min(8 + n, size, 8 + (100 << 20)), 0)
            hdr = parse_header(head, size)
            metadata = hdr.metadata
            special = {}
            if codec == "auto":
                from . import policy

                if hasattr(policy, "packed_codecs"):
                    special = policy.packed_codecs(hdr.tensors, level)
            pieces.append(Piece("header", 0, hdr.data_start, "U8", [hdr.data_start]))
            for t in hdr.tensors:
                fx = special.get(t.name)
                pieces.append(Piece("tensor", hdr.data_start + t.begin, t.nbytes, t.dtype, list(t.shape), t.name,
                                    fx.get_config() if fx is not None else None))
        elif container == "gguf":
            if r.fd is None:
                raise CodecError(f"{url}: GGUF inputs must be local or on a shared filesystem "
                                 f"(fsspec URLs are supported for safetensors and opaque files)")
            import mmap

            from .gguf import PLAIN, layout, parse

            if size == 0:
                from .gguf import GGUFError

                raise GGUFError(f"{url}: empty file is not GGUF")
            with mmap.mmap(r.fd, 0, access=mmap.ACCESS_READ) as mm:
                try:
                    info = parse(mm, size)
                except CodecError as exc:
                    raise type(exc)(f"{url}: {exc}") from None
            for role, start, length, t in layout(info, size):
                if role == "tensor":
                    dtype = t.type_name if t.type_name in PLAIN else f"GGUF_{t.type_name}"
                    pieces.append(Piece("tensor", start, length, dtype, list(t.shape), t.name))
                else:
                    pieces.append(Piece(role, start, length, "U8", [length],
                                        zstd_level=(19 if level is None else level) if role == "header"
                                        else "default"))
            metadata = {"gguf.version": str(info.version)}
            for k in ("general.architecture", "general.name", "general.file_type"):
                if k in info.metadata:
                    metadata[k] = str(info.metadata[k])
        elif container == "bytes":
            pieces.append(Piece("bytes", 0, size, "U8", [size]))
        else:
            raise ValueError(f"container must be 'auto', 'safetensors', 'gguf' or 'bytes', not {container!r}")
    return FilePlan(url, container, size, metadata, pieces)


def piece_codec(p: Piece, codec, level):
    from .policy import resolve
    from .registry import get_codec

    if p.fixed is not None:
        return get_codec(p.fixed)
    if p.role in ("tensor", "bytes"):
        return resolve(codec, p.dtype, level)
    return resolve("zstd", "U8", level if p.zstd_level == "default" else p.zstd_level)
