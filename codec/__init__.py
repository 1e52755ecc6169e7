"""codec: lossless compression of neural-network weights and data.

    >>> import codec, numpy as np
    >>> frame = codec.compress(np.arange(10, dtype=np.float32))
    >>> codec.decompress(frame)
    array([0., 1., 2., 3., 4., 5., 6., 7., 8., 9.], dtype=float32)

`import codec` is cheap: heavy modules (torch, cupy, transformers, huggingface_hub)
load only when used.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BackendUnavailableError, ChecksumError, CodecError, FormatError, ModelMismatchError,
    TruncatedError, UnknownCodecError, UnsupportedVersionError,
)
from .registry import get_codec, register_codec, registered  # noqa: E402

_API = {"compress", "decompress", "compress_file", "decompress_file", "verify", "open", "load_file", "inspect",
        "CompressedFile", "Result"}


_HOOKS = {"load_model", "attach"}

_DISTRIBUTED = {"compress_many", "decompress_many"}


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _HOOKS:
        from . import hooks

        return getattr(hooks, name)
    if name in _DISTRIBUTED:
        from . import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")


__all__ = sorted(_API | _HOOKS | _DISTRIBUTED | {"__version__", "get_codec", "register_codec", "registered", "CodecError",
                         "FormatError", "TruncatedError", "ChecksumError", "UnsupportedVersionError",
                         "UnknownCodecError", "ModelMismatchError", "BackendUnavailableError"})
