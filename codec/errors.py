"""Every exception `codec` raises. Messages name what is wrong and where."""
from __future__ import annotations


class CodecError(Exception):
    """Base class of all `codec` errors."""


class FormatError(CodecError, ValueError):
    """The bytes do not follow the format (corrupt, malicious or not ours)."""


class TruncatedError(FormatError):
    """The input ends before a structure it announces."""


class ChecksumError(FormatError):
    """A stored checksum does not match the bytes it covers."""


class UnsupportedVersionError(FormatError):
    """The format version (or a must-understand feature) is newer than this library."""


class UnknownCodecError(CodecError, KeyError):
    """A codec id that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelMismatchError(CodecError):
    """The LLM coder's model or tokenizer fingerprint differs from the one used to encode."""


class BackendUnavailableError(CodecError, ImportError):
    """An optional backend (CuPy, a GPU, torch, transformers) is needed but missing."""


class FileExistsCodecError(CodecError, FileExistsError):
    """Refusing to overwrite an existing file without `overwrite=True` / `--force`."""
