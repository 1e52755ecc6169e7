"""Codec registry: ids to classes, and configs to codec instances."""
from __future__ import annotations

import threading
from typing import Any

from .abc import Codec
from .errors import FormatError, UnknownCodecError

_REGISTRY: dict[str, type[Codec]] = {}
_BUILTINS_LOADED = False
_LOAD_LOCK = threading.RLock()     # re-entrant: importing the codecs may ask for the registry


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Register a codec class (usable as a decorator)."""
    _REGISTRY[codec_id or cls.codec_id] = cls
    return cls


def _load_builtins() -> None:
    # Imported here so that `import codec` stays cheap and cycles are impossible. Threads may
    # build codecs concurrently (decode_frames): the flag is set only once the import is done.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    with _LOAD_LOCK:
        if not _BUILTINS_LOADED:
            from . import entropy  # noqa: F401  (registers raw, zstd, ...)

            _BUILTINS_LOADED = True


def registered() -> dict[str, type[Codec]]:
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_codec(config: dict[str, Any] | str | Codec) -> Codec:
    """A codec instance from an id string, a config dict or an instance."""
    _load_builtins()
    if isinstance(config, Codec):
        return config
    if isinstance(config, str):
        config = {"id": config}
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise FormatError(f"codec config must be a JSON object with a string 'id', got {config!r:.200}")
    cls = _REGISTRY.get(config["id"])
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownCodecError(f"unknown codec id {config['id']!r} (registered: {known})")
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"invalid config for codec {config['id']!r}: {exc}") from exc
