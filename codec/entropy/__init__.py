"""Entropy coders. Importing this package registers the built-in codecs."""
from . import raw, zstd  # noqa: F401
from . import exponent  # noqa: F401
from ..transforms import bytegroup  # noqa: F401  (registers `bytegroup`)
