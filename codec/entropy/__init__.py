"""Entropy coders. Importing this package registers the built-in codecs."""
from . import raw, zstd  # noqa: F401
