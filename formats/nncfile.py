"""The `.nnc` file: signature, frames, manifest (the seek table) and footer (SPEC.md section 3).

The manifest lists the original file's pieces in byte order (the verbatim safetensors
header, each tensor, opaque byte runs), each with the offset and length of its frame,
so one tensor is read without touching the rest and concatenating the decoded pieces
restores the original file exactly (its sha256 is recorded and checked).
"""
from __future__ import annotations

import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from ..checksum import xxh64
from ..errors import ChecksumError, FileExistsCodecError, FormatError, TruncatedError, UnsupportedVersionError
from .buffer import PreadBuffer
from .frame import FIXED, FLAG_PACKED_CONFIG, VERSION, Frame, parse_frame

SIGNATURE = b"\x89NNC\r\n\x1a\n"
FILE_HEADER = struct.Struct("<8sBBHI")       # signature, major, minor, flags, reserved
FOOTER = struct.Struct("<QQQ8s")             # manifest offset, length, checksum, magic
FOOTER_MAGIC = b"NNCSEEK\x00"
FILE_FLAG_PACKED_MANIFEST = 0x0001          # 1.1: the manifest is a zstd frame (metapack)
FRAME_ALIGN = 64                             # frames start on 64-byte boundaries (zero padding)
MAX_MANIFEST = 256 << 20
ROLES = ("header", "tensor", "bytes")
CONTAINERS = ("safetensors", "bytes", "gguf")


@dataclass
class Entry:
    role: str            # "header" | "tensor" | "bytes"
    offset: int          # frame offset in the .nnc file
    length: int          # frame length
    name: str | None = None
    dtype: str | None = None
    shape: list[int] | None = None


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
class AtomicWriter:
    """A temp file beside `path`, renamed over it on success and removed on failure: readers see
    the old file or the whole new one, never a part. sync=True also flushes the data to disk
    before the rename (durable against a power cut); like zstd and gzip, the default leaves that
    to the OS, as it costs the disk's write time (32 ms for 45 MB on the development machine, as
    long as decompressing the file)."""

    def __init__(self, path, overwrite: bool = False, sync: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsCodecError(f"{self.path} exists (use --force / overwrite=True to replace it)")
        self.overwrite = overwrite
        self.sync = sync
        self.fh = None

    def __enter__(self):
        parent = self.path.parent if str(self.path.parent) else Path(".")
        # created with mode 0o666 less the umask, as open() would (mkstemp's 0o600 made every
        # output private to its owner)
        while True:
            self.tmp = str(parent / f".{self.path.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
        self.fh = os.fdopen(fd, "w+b")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.fh.flush()
                if self.sync:
                    os.fsync(self.fh.fileno())
            self.fh.close()
            if exc_type is None:
                if self.path.exists() and not self.overwrite:  # appeared while we worked
                    raise FileExistsCodecError(f"{self.path} appeared while writing; not replaced")
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


class NncWriter:
    """Writes frames into an open, seekable file object; `finish` appends the manifest."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.entries: list[Entry] = []
        self.start = fh.tell()
        fh.write(FILE_HEADER.pack(SIGNATURE, VERSION[0], 0, 0, 0))   # patched by finish() for 1.1

    def begin_frame(self) -> int:
        pos = self.fh.tell()
        pad = -pos % FRAME_ALIGN
        if pad:
            self.fh.write(b"\0" * pad)
        return pos + pad

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)

    def _frame_flags(self, e: Entry) -> int:
        end = self.fh.tell()
        self.fh.seek(e.offset + 6)
        flags = struct.unpack("<H", self.fh.read(2))[0] if e.length >= FIXED.size else 0
        self.fh.seek(end)
        return flags

    def finish(self, container: str, original_size: int, original_sha256: str,
               metadata: dict | None, library: str, extra: dict | None = None) -> int:
        # A file whose frames pack their configs (small inputs, see metapack) packs its manifest
        # too, and is then format 1.1; anything else is written exactly as format 1.0.
        packed = any(self._frame_flags(e) & FLAG_PACKED_CONFIG for e in self.entries)
        manifest = {
            "format": [VERSION[0], 1 if packed else 0],
            "library": library,
            "container": container,
            "original_size": original_size,
            "original_sha256": original_sha256,
            "metadata": metadata,
            "entries": [{k: v for k, v in e.__dict__.items() if v is not None} for e in self.entries],
        }
        if extra:
            manifest.update(extra)
        blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if packed:
            from .metapack import pack

            blob = pack(blob)
            end = self.fh.tell()
            self.fh.seek(self.start)
            self.fh.write(FILE_HEADER.pack(SIGNATURE, VERSION[0], 1, FILE_FLAG_PACKED_MANIFEST, 0))
            self.fh.seek(end)
        off = self.fh.tell()
        self.fh.write(blob)
        self.fh.write(FOOTER.pack(off, len(blob), xxh64(blob), FOOTER_MAGIC))
        return self.fh.tell()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
class NncFile:
    """A validated `.nnc` file. Frames are parsed on demand; nothing else is read up front."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.buf = PreadBuffer(self._fd)
            self._read_manifest()
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_manifest(self) -> None:
        size = len(self.buf)
        where = str(self.path)
        if size < FILE_HEADER.size + FOOTER.size:
            raise TruncatedError(f"{where}: {size} bytes is too short for a .nnc file")
        sig, major, minor, flags, reserved = FILE_HEADER.unpack(self.buf[0:FILE_HEADER.size])
        if sig != SIGNATURE:
            raise FormatError(f"{where}: not a .nnc file (bad signature {sig!r} at byte 0)")
        if major != VERSION[0] or minor > VERSION[1]:
            raise UnsupportedVersionError(f"{where}: file format {major}.{minor} is not supported "
                                          f"(this library reads up to {VERSION[0]}.{VERSION[1]})")
        if flags & ~FILE_FLAG_PACKED_MANIFEST or (flags != 0) != (minor == 1) or reserved:
            raise UnsupportedVersionError(f"{where}: reserved file header bits set at byte 10 "
                                          f"(flags {flags:#06x} in format {major}.{minor})")
        m_off, m_len, m_sum, magic = FOOTER.unpack(self.buf[size - FOOTER.size:size])
        if magic != FOOTER_MAGIC:
            raise TruncatedError(f"{where}: footer magic missing at byte {size - FOOTER.size} "
                                 f"(file truncated or not finished)")
        if m_len > MAX_MANIFEST or m_off < FILE_HEADER.size or m_off + m_len != size - FOOTER.size:
            raise FormatError(f"{where}: footer points the manifest at [{m_off}, {m_off + m_len}), "
                              f"which does not end at the footer (byte {size - FOOTER.size})")
        blob = self.buf[m_off:m_off + m_len]
        if xxh64(blob) != m_sum:
            raise ChecksumError(f"{where}: manifest checksum mismatch (manifest at byte {m_off})")
        if flags & FILE_FLAG_PACKED_MANIFEST:
            from .metapack import unpack

            blob = unpack(blob, MAX_MANIFEST, f"{where}: manifest at byte {m_off}")
        try:
            man = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{where}: manifest is not valid JSON: {exc}") from None
        self.manifest = man
        self.entries = _validate_manifest(man, m_off, where)
        if man["format"] != [major, minor]:
            raise FormatError(f"{where}: manifest says format {man['format']}, file header {major}.{minor}")
        self.tensors = {e.name: e for e in self.entries if e.role == "tensor"}

    @property
    def container(self) -> str:
        return self.manifest["container"]

    @property
    def metadata(self) -> dict | None:
        return self.manifest.get("metadata")

    def frame(self, entry: Entry) -> Frame:
        """The entry's frame, parsed over the file (its chunks are read when decoded)."""
        fr = parse_frame(self.buf, entry.offset, entry.length, where=self._where(entry))
        return self._check_entry(fr, entry)

    def _where(self, entry: Entry) -> str:
        label = f"tensor {entry.name!r}" if entry.role == "tensor" else f"{entry.role} segment"
        return f"{self.path.name}: {label}"

    @staticmethod
    def _check_entry(fr: Frame, entry: Entry) -> Frame:
        if entry.role == "tensor":
            from ..dtypes import lookup
            import math

            dt = lookup(entry.dtype)
            expect = math.prod(entry.shape) * dt.itemsize
            if fr.dtype != entry.dtype or list(fr.shape) != list(entry.shape) or (
                    dt.name != "OPAQUE" and fr.decoded_size != expect):
                raise FormatError(f"{fr.where}: frame says {fr.dtype}{fr.shape} ({fr.decoded_size} bytes), "
                                  f"manifest says {entry.dtype}{entry.shape}")
        return fr


def _validate_manifest(man, limit: int, where: str) -> list[Entry]:
    def bad(msg):
        return FormatError(f"{where}: manifest {msg}")

    if not isinstance(man, dict):
        raise bad("is not an object")
    fmt = man.get("format")
    if not (isinstance(fmt, list) and len(fmt) == 2 and all(isinstance(v, int) for v in fmt)):
        raise bad("has no format version")
    if fmt[0] != VERSION[0] or fmt[1] > VERSION[1]:
        raise UnsupportedVersionError(f"{where}: manifest format {fmt[0]}.{fmt[1]} is not supported")
    if man.get("container") not in CONTAINERS:
        raise bad(f"names an unknown container {man.get('container')!r:.50}")
    size = man.get("original_size")
    sha = man.get("original_sha256")
    if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or len(sha) != 64:
        raise bad("lacks the original size or sha256")
    x3 = man.get("original_xxh3")
    if "original_xxh3" in man and not (isinstance(x3, str) and len(x3) == 16
                                       and all(c in "0123456789abcdef" for c in x3)):
        raise bad(f"original_xxh3 {x3!r:.40} is not 16 lowercase hex digits")
    lossy = man.get("lossy")
    if lossy is not None:
        dsha = lossy.get("decoded_sha256") if isinstance(lossy, dict) else None
        if not (isinstance(dsha, str) and len(dsha) == 64 and all(c in "0123456789abcdef" for c in dsha)):
            raise bad("marks the file lossy but records no valid decoded_sha256")
    md = man.get("metadata")
    if md is not None and not (isinstance(md, dict) and all(isinstance(v, str) for v in md.values())):
        raise bad("metadata must map strings to strings")
    raw_entries = man.get("entries")
    if not isinstance(raw_entries, list):
        raise bad("has no entry list")
    entries, names, end = [], set(), FILE_HEADER.size
    for i, e in enumerate(raw_entries):
        if not isinstance(e, dict) or e.get("role") not in ROLES:
            raise bad(f"entry {i} has no valid role")
        off, ln = e.get("offset"), e.get("length")
        if not (isinstance(off, int) and isinstance(ln, int)) or off < end or ln < 0 or off + ln > limit:
            raise bad(f"entry {i} frame [{off}, {off}+{ln}) overlaps another or lies outside [{end}, {limit})")
        end = off + ln
        ent = Entry(e["role"], off, ln)
        if ent.role == "tensor":
            name, dtype, shape = e.get("name"), e.get("dtype"), e.get("shape")
            if not isinstance(name, str) or name in names:
                raise bad(f"entry {i} has a missing or duplicate tensor name {name!r:.100}")
            if not isinstance(dtype, str) or not isinstance(shape, list) or len(shape) > 64 or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise bad(f"tensor {name!r} has an invalid dtype or shape")
            names.add(name)
            ent.name, ent.dtype, ent.shape = name, dtype, shape
        entries.append(ent)
    return entries
