"""`llm`: lossless text compression with a language model driving a range coder (LLMZip style).

Pipeline of one container chunk (a flat uint8 array):

1. **Tokens with byte fallback.** The bytes are split into valid UTF-8 runs and invalid bytes
   (`surrogateescape`). Valid runs go through the model's byte-level BPE tokenizer; a run whose
   tokens do not give back its exact bytes, and every invalid byte, becomes single-byte tokens.
   Byte values without a single-byte token in the vocabulary (SmolLM2 lacks 21, e.g. 0xC0,
   0xFF) get *escape symbols* appended after the model's outputs. So any bytes round-trip. Only
   the encoder tokenizes; the decoder needs just the token -> bytes table.
2. **Windows.** The N tokens are cut into independent windows of W tokens (the last one may be
   shorter), each decoded without the others, starting from the tokenizer's BOS (else EOS) token:
   `W = min(N, clamp(ceil(N / batch), min_window, max_window))`. Windows are grouped into
   `n_batches = max(ceil(n_win / batch), min(lanes, n_win))` batches of `R = ceil(n_win / n_batches)`
   rows; window k is row `k % R` of batch `k // R`; a short last batch is padded to R rows.
3. **Evaluation paths.** Each batch runs through the model in lockstep, one token per step for
   all R rows, in `torch.inference_mode`, on the CPU, with torch's intra-op thread count set to
   the config's `eval_threads` (absent in frames written before it was recorded: 1) in the thread
   that runs the batch. New frames record 2 on the lean path (one batch of all rows on two threads
   streams the weights once per step; two one-thread lanes streamed them twice) and 1 on the
   `transformers` path. `lean-llama-1` (the default for Llama-architecture models with
   plain RoPE and safetensors weights; `codec.llm_lean` defines it, dtype = weight dtype, bfloat16 by default)
   steps a preallocated KV cache with fused projections; `hf-kv-lockstep-1` (any other causal
   LM) calls the `transformers` model (`input_ids` [R, 1], `position_ids` = step, no attention
   mask, its KV cache reused across steps; dtype = evaluation dtype). Finished or padding
   rows feed the start token; their outputs are ignored. Encoding takes exactly the same path as
   decoding (never a parallel "prefill" pass), because logits change in the last bits with the
   batch shape, the row position and the thread count (measured on this project's machines); the
   shape (W, R) is written into each chunk so decoding reproduces it whatever the runtime
   settings (threads, container workers).
4. **Probabilities -> integer frequencies** (`freq-v1`, precision P = 24 bits, A symbols = model
   outputs + escapes): logits are cast to float64, `e = exp(l - max(l))`,
   `w_i = floor(e_i * ((2^P - A) / sum(e)))` for model outputs and `w_i = 0` for escapes; the
   remainder `(2^P - A) - sum(w)` is added to the first argmax; `freq_i = w_i + 1`. So every
   symbol has frequency >= 1 and the frequencies sum to exactly 2^P. `constriction`'s
   `Categorical(perfect=False)` is handed the integers `w_i` as float64: with integer inputs
   below 2^53 its leaky quantizer (`cdf_i = floor(sum_{j<i} w_j * (2^P - A)/sum(w)) + i`) is
   exact and reproduces `freq` bit for bit.
5. **Coding**: one `constriction.stream.queue.RangeEncoder` (FIFO) per batch (layout below).

Encoded chunk layout (little-endian), version 2: `u8 version=2, u8 reserved=0, u16 R, u32 N,
u32 W`, then per batch `u32 words`, then per window `u32 xxh32(window's decoded bytes)`, then
each batch's range-coder words (`u32` each) in batch order. The windows of a batch share one
range coder (FIFO): symbols are coded in lockstep order, step by step and row by row within a
step, which is the order the decoder recovers them in; sharing saves each window's flush and
length. Version 1 (earlier releases, still decoded): per window `u32 words, u32 xxh32`, then one
stream per window. Decoding checks every window's checksum and names the window that diverged
(a different model evaluation would give a clear `ChecksumError`, never silent garbage); the
container checks the chunk's XXH3 on top.

The frame config records the model spec and fingerprints (`codec.llm_model`), precision,
chunking parameters, the evaluation path, dtype, attention implementation and the library
versions. Decoding with a model or tokenizer whose fingerprint differs raises
`ModelMismatchError` before any token is decoded.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..abc import Codec
from ..errors import ChecksumError, FormatError, ModelMismatchError
from ..registry import register_codec
from ..stats import StreamStat, byte_entropy_bits

log = logging.getLogger("codec.llm")

EVAL_PATH = "hf-kv-lockstep-1"     # transformers model, its KV cache
LEAN_PATH = "lean-llama-1"         # codec.llm_lean (Llama family); the default where it applies
EVAL_PATHS = (EVAL_PATH, LEAN_PATH)
FREQ_RULE = "freq-v1"
CHUNK_VERSION = 2                     # written; version 1 (one stream per window) still decodes
HEAD = struct.Struct("<BBHII")        # version, reserved, rows R, tokens N, window W
WIN = struct.Struct("<II")            # version 1: range-coder words, xxh32 of the window's bytes
U32 = struct.Struct("<I")
_SURROGATES = re.compile("([\udc80-\udcff]+)")
#: intra-op threads per batch on the lean path: one batch of all rows on two threads streams the
#: weights once per step, against once per lane for two single-thread lanes (benches/text.py).
LEAN_THREADS = 2
_DEFAULT_MODEL = "smollm2-135m-instruct"   # = codec.llm_model.DEFAULT_MODEL (no torch import here)

# Lockstep batches evaluating right now. torch's intra-op thread count is part of the evaluation
# (module doc) and is an OpenMP setting of the calling thread, so every batch sets it in its own
# thread; at most cores // threads batches run at once so the cores are not oversubscribed.
_SLOTS = threading.Condition()
_SLOTS_ACTIVE = 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _eval_threads(torch, threads: int):
    global _SLOTS_ACTIVE
    limit = max(1, _cores() // threads)
    with _SLOTS:
        while _SLOTS_ACTIVE >= limit:
            _SLOTS.wait()
        _SLOTS_ACTIVE += 1
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        with _SLOTS:
            _SLOTS_ACTIVE -= 1
            _SLOTS.notify_all()


def max_kv_bytes() -> int:
    """Largest KV cache one batch may allocate (decoding hostile input must not exhaust memory)."""
    try:
        return int(float(os.environ.get("CODEC_LLM_MAX_KV_GIB", "8")) * 2**30)
    except ValueError:
        return 8 << 30


def plan(n_tokens: int, batch: int, lanes: int, min_window: int, max_window: int) -> tuple[int, int]:
    """(W, R): tokens per window and rows per batch for a chunk of n_tokens (see module doc)."""
    if n_tokens <= 0:
        return 0, 0
    w = min(n_tokens, max(min_window, min(max_window, -(-n_tokens // batch))))
    n_win = -(-n_tokens // w)
    n_batches = max(-(-n_win // batch), min(lanes, n_win))
    return w, -(-n_win // n_batches)


def quantize(logits, n_symbols: int, precision: int, buffers: dict | None = None):
    """Rule `freq-v1`: float logits [R, V] -> float64 numpy [R, A] of the free weights w_i.

    The coder's frequencies are `w + 1` (every symbol >= 1, sum exactly 2^precision). The weights
    are whole numbers kept in float64 (exact below 2^53), computed in place: one [R, V] buffer
    instead of one per operation (`tests/test_llm.py` holds this to the plain formulation).
    `buffers` (a dict the caller keeps across steps of one shape) reuses that buffer and the
    output between calls: fresh multi-megabyte arrays every step cost more in page faults than
    the arithmetic. The returned array is then overwritten by the next call.
    """
    import torch

    rows, vocab = logits.shape
    shape = (rows, vocab, n_symbols)
    if buffers is not None and buffers.get("shape") == shape:
        z, out = buffers["z"], buffers["out"]
        z.copy_(logits)
    else:
        z = torch.empty((rows, vocab), dtype=torch.float64)
        z.copy_(logits)
        out = np.empty((rows, n_symbols), np.float64)
        out[:, vocab:] = 0.0                  # escape symbols: free weight 0, never written again
        if buffers is not None:
            buffers.update(shape=shape, z=z, out=out)
    z.sub_(z.max(dim=-1, keepdim=True).values)
    z.exp_()
    free = (1 << precision) - n_symbols
    z.mul_(free / z.sum(dim=-1, keepdim=True))
    z.floor_()
    rest = free - z.sum(dim=-1)
    top = torch.argmax(z, dim=-1)       # first maximum: deterministic tie-break
    z[torch.arange(rows), top] += rest
    out[:, :vocab] = z.numpy()
    return out


def _xxh32(data: bytes) -> int:
    import xxhash

    return xxhash.xxh32_intdigest(data)


@register_codec
class LLMArith(Codec):
    codec_id = "llm"
    description = "text: a language model's next-token probabilities drive a range coder (LLMZip)"
    max_expansion = 1.0
    #: A 20 KB text codes to ~2.4 KB; its config (fingerprints, versions) is ~0.5 KB of JSON.
    packed_config = True
    #: 64 KiB of English is ~16k tokens: 24 windows of ~680 tokens in one batch; 20 KB is 13
    #: windows of 384. The container's workers run chunks in parallel on top (at most
    #: cores // eval_threads batches evaluate at once).
    default_chunk_size = 1 << 16

    def __init__(self, model: str = _DEFAULT_MODEL, model_sha256: str | None = None,
                 tokenizer_sha256: str | None = None, precision: int = 24, batch: int = 24,
                 lanes: int = 1, min_window: int = 384, max_window: int = 1024,
                 start_token: int | None = None, n_symbols: int | None = None,
                 eval_path: str | None = None, freq_rule: str = FREQ_RULE, dtype: str = "bfloat16",
                 attn: str = "sdpa", versions: dict | None = None, threads: int | None = None,
                 eval_threads: int | None = None):
        ints = {"precision": precision, "batch": batch, "lanes": lanes, "min_window": min_window,
                "max_window": max_window, "eval_threads": 1 if eval_threads is None else eval_threads}
        for k, v in ints.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"llm: {k} must be a positive integer, got {v!r}")
        if precision != 24:
            raise ValueError(f"llm: precision {precision} unsupported (constriction's categorical "
                             f"models in Python use 24 bits)")
        if min_window > max_window or max_window > 1 << 16 or batch > 1024 or lanes > 64 \
                or ints["eval_threads"] > 64:
            raise ValueError(f"llm: window/batch parameters out of range ({ints})")
        if eval_path is not None and eval_path not in EVAL_PATHS:
            raise ValueError(f"llm: evaluation path {eval_path!r} unknown (this build: {EVAL_PATHS})")
        if eval_path == LEAN_PATH and dtype not in ("float32", "bfloat16"):
            raise ValueError(f"llm: the {LEAN_PATH} path takes dtype 'float32' or 'bfloat16', not {dtype!r}")
        if freq_rule != FREQ_RULE:
            raise ValueError(f"llm: frequency rule {freq_rule!r} unknown (this build: {FREQ_RULE!r})")
        if dtype not in ("float32", "bfloat16", "qint8"):
            raise ValueError(f"llm: dtype must be 'float32', 'bfloat16' or 'qint8', got {dtype!r}")
        if attn not in ("sdpa", "eager"):
            raise ValueError(f"llm: attn must be 'sdpa' or 'eager', got {attn!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"llm: model must be a name or a folder path, got {model!r}")
        self.model = model
        self.model_sha256 = model_sha256
        self.tokenizer_sha256 = tokenizer_sha256
        self.precision, self.batch, self.lanes = precision, batch, lanes
        self.min_window, self.max_window = min_window, max_window
        self.start_token, self.n_symbols = start_token, n_symbols
        self.eval_path, self.freq_rule, self.dtype, self.attn = eval_path, freq_rule, dtype, attn
        self.versions = versions
        #: torch intra-op threads of every batch's evaluation (recorded; None = 1, as frames
        #: written before it was recorded were evaluated). fit() picks the default.
        self.eval_threads = eval_threads
        #: Runtime only (not in the config, never changes the bits): threads running batches.
        self.threads = threads
        self._write_version = CHUNK_VERSION
        self._lm = None
        self._lm_lock = threading.Lock()

    # -- configuration -----------------------------------------------------------------
    def get_config(self):
        cfg = {"id": self.codec_id, "model": self.model, "model_sha256": self.model_sha256,
               "tokenizer_sha256": self.tokenizer_sha256, "precision": self.precision,
               "batch": self.batch, "lanes": self.lanes, "min_window": self.min_window,
               "max_window": self.max_window, "start_token": self.start_token,
               "n_symbols": self.n_symbols, "eval_path": self.eval_path,
               "freq_rule": self.freq_rule, "dtype": self.dtype, "attn": self.attn,
               "versions": self.versions}
        if self.eval_path == LEAN_PATH:
            del cfg["attn"]     # the lean path has one attention; frames are small, keep them so
        if self.eval_threads is not None:
            cfg["eval_threads"] = self.eval_threads
        return cfg

    @classmethod
    def from_config(cls, config):
        params = {k: v for k, v in config.items() if k != "id"}
        params.pop("threads", None)
        return cls(**params)

    def describe(self) -> str:
        fp = f"{(self.model_sha256 or '?')[:8]}/{(self.tokenizer_sha256 or '?')[:8]}"
        name = self.model if self.model == _DEFAULT_MODEL else self.model.rstrip("/").rsplit("/", 1)[-1]
        return (f"llm:{fp} {name} window={self.min_window}..{self.max_window} batch={self.batch} "
                f"p={self.precision} {self.dtype}")

    def __eq__(self, other):
        return isinstance(other, LLMArith) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.codec_id)

    # -- model -------------------------------------------------------------------------
    def _loaded(self):
        """The model, after checking the recorded fingerprints (ModelMismatchError if they differ)."""
        with self._lm_lock:
            if self._lm is not None:
                return self._lm
            from .. import llm_model

            torch = llm_model.require_backend(transformers=False)
            if self.model_sha256 is not None or self.tokenizer_sha256 is not None:
                msha, tsha = llm_model.fingerprints(self.model)
                if (msha, tsha) != (self.model_sha256, self.tokenizer_sha256):
                    raise ModelMismatchError(
                        f"llm: model {self.model!r} has fingerprint model={msha[:16]}.. "
                        f"tokenizer={tsha[:16]}.., the data was encoded with model="
                        f"{str(self.model_sha256)[:16]}.. tokenizer={str(self.tokenizer_sha256)[:16]}..")
            lean = self.eval_path == LEAN_PATH
            if self.eval_path is None:   # not fitted yet: the lean path where the model allows it
                lean = self.dtype in ("float32", "bfloat16") and llm_model.lean_unsupported(self.model) is None
            lm = llm_model.load(self.model, self.attn, self.dtype, lean=lean)
            if self.n_symbols is not None and self.n_symbols != lm.n_symbols:
                raise ModelMismatchError(f"llm: model {self.model!r} has {lm.n_symbols} coder symbols, "
                                         f"the data was encoded with {self.n_symbols}")
            if self.start_token is not None and self.start_token != lm.tokens.start_id:
                raise ModelMismatchError(f"llm: start token {lm.tokens.start_id} != recorded {self.start_token}")
            self._lm = (torch, lm, lm.model)
            return self._lm

    def fit(self, source, dtype):
        """Fill in fingerprints, alphabet size, start token and versions (loads the model)."""
        from .. import llm_model

        if self.model_sha256 is not None:
            return self
        _, lm, _ = self._loaded()
        cfg = self.get_config()
        lean = lm.lean is not None
        versions = llm_model.versions()
        if lean:            # transformers takes no part in the lean path's numbers
            versions.pop("transformers", None)
        cfg.update(model_sha256=lm.model_sha256, tokenizer_sha256=lm.tokenizer_sha256,
                   n_symbols=lm.n_symbols, start_token=lm.tokens.start_id,
                   versions=versions, eval_path=LEAN_PATH if lean else EVAL_PATH)
        if cfg.get("eval_threads") is None:
            cfg["eval_threads"] = LEAN_THREADS if lean else 1
        fitted = LLMArith.from_config(cfg)
        fitted.threads = self.threads
        fitted._lm = self._lm
        return fitted

    def _check_fitted(self):
        if self.model_sha256 is None or self.n_symbols is None or self.start_token is None \
                or self.eval_path is None:
            raise FormatError("llm: config lacks the model fingerprint (call fit() before encode)")

    # -- tokens ------------------------------------------------------------------------
    def tokenize(self, data: bytes, lm) -> np.ndarray:
        """Token ids of `data` whose bytes concatenate back to exactly `data`."""
        tab = lm.tokens
        text = data.decode("utf-8", errors="surrogateescape")
        parts = _SURROGATES.split(text)
        texts = [p for i, p in enumerate(parts) if i % 2 == 0 and p]
        encs = iter(tab.backend.encode_batch(texts, add_special_tokens=False)) if texts else iter(())
        out = []
        tb = tab.token_bytes
        for i, p in enumerate(parts):
            if not p:
                continue
            raw = p.encode("utf-8", errors="surrogateescape")
            if i % 2 == 0:
                ids = next(encs).ids
                if len(ids) and b"".join(tb[t] for t in ids) == raw:
                    out.append(np.asarray(ids, np.int64))
                    continue
            out.append(tab.byte_ids[np.frombuffer(raw, np.uint8)])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # -- coding ------------------------------------------------------------------------
    def _run_batch(self, rows: list[np.ndarray | None], n_rows: int, steps: int, coders: list,
                   decode: bool, lm_bundle) -> None:
        """Lockstep evaluation of one batch; encodes rows' tokens or decodes them in place.

        rows[r]: the window's token ids (encoding) or an int64 array to fill (decoding); the
        window count is len(rows) <= n_rows (the rest are padding rows).
        """
        torch, lm, net = lm_bundle
        import constriction

        need, limit = lm.kv_bytes(n_rows, steps), max_kv_bytes()
        if need > limit:
            error = FormatError if decode else ValueError
            raise error(f"llm: a batch of {n_rows} windows of {steps} tokens needs a {need / 2**30:.1f} GiB "
                        f"KV cache, above the {limit / 2**30:.1f} GiB limit "
                        f"(CODEC_LLM_MAX_KV_GIB; encode with a smaller batch or max_window)")

        family = constriction.stream.model.Categorical(perfect=False)
        vocab, start = lm.vocab_size, lm.tokens.start_id
        lens = [len(r) for r in rows]
        inp = np.full(n_rows, start, np.int64)
        buffers: dict = {}
        with torch.inference_mode(), _eval_threads(torch, self.eval_threads or 1):
            if lm.lean is not None:
                session = lm.lean.session(n_rows, steps)   # here: it checks its kernels at these threads

                def logits(t):
                    return session.step(torch.from_numpy(inp), t)
            else:
                from transformers import DynamicCache

                cache = DynamicCache(config=net.config)

                def logits(t):
                    out = net(input_ids=torch.from_numpy(inp).view(n_rows, 1), past_key_values=cache,
                              use_cache=True, position_ids=torch.full((n_rows, 1), t, dtype=torch.long),
                              logits_to_keep=1)
                    return out.logits[:, -1, :]
            for t in range(steps):
                w = quantize(logits(t), self.n_symbols, self.precision, buffers)
                for r, row in enumerate(rows):
                    if t >= lens[r]:
                        continue
                    if decode:
                        sym = int(coders[r].decode(family, w[r:r + 1])[0])
                        row[t] = sym
                    else:
                        sym = int(row[t])
                        coders[r].encode(np.array([sym], np.int32), family, w[r:r + 1])
                    inp[r] = sym if sym < vocab else start
                for r in range(len(rows), n_rows):
                    inp[r] = start
                for r in range(len(rows)):
                    if t >= lens[r]:
                        inp[r] = start

    def _pool_map(self, fn, items):
        threads = self.threads
        if threads is None:
            from ..api import default_workers

            threads = default_workers()
        if threads <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
            return list(pool.map(fn, items))

    def encode(self, chunk: np.ndarray) -> bytes:
        import constriction

        self._check_fitted()
        bundle = self._loaded()
        lm = bundle[1]
        data = np.ascontiguousarray(chunk, np.uint8).tobytes()
        ids = self.tokenize(data, lm)
        n = int(ids.size)
        if n == 0:
            return HEAD.pack(CHUNK_VERSION, 0, 0, 0, 0)
        w, r = plan(n, self.batch, self.lanes, self.min_window, self.max_window)
        windows = [ids[s:s + w] for s in range(0, n, w)]
        batches = [list(range(s, min(len(windows), s + r))) for s in range(0, len(windows), r)]
        # One range coder per batch: symbols go in lockstep order (step, row), which is the
        # order the decoder produces them in, so the windows of a batch share one stream.
        v1 = self._write_version == 1      # tests only: the layout of earlier releases
        coders = [constriction.stream.queue.RangeEncoder() for _ in (windows if v1 else batches)]

        def one(i):
            b = batches[i]
            self._run_batch([windows[k] for k in b], r, max(len(windows[k]) for k in b),
                            [coders[k] for k in b] if v1 else [coders[i]] * len(b), False, bundle)

        self._pool_map(one, list(range(len(batches))))
        tb = lm.tokens.token_bytes
        streams = [np.ascontiguousarray(c.get_compressed(), "<u4") for c in coders]
        if v1:
            return b"".join([HEAD.pack(1, 0, r, n, w)]
                            + [WIN.pack(st.size, _xxh32(b"".join(tb[t] for t in win)))
                               for st, win in zip(streams, windows)]
                            + [st.tobytes() for st in streams])
        return b"".join([HEAD.pack(CHUNK_VERSION, 0, r, n, w)]
                        + [U32.pack(s.size) for s in streams]
                        + [U32.pack(_xxh32(b"".join(tb[t] for t in win))) for win in windows]
                        + [s.tobytes() for s in streams])

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        import constriction

        buf = memoryview(encoded).cast("B")
        if len(buf) < HEAD.size:
            raise FormatError(f"llm chunk of {len(buf)} bytes is shorter than its {HEAD.size}-byte header")
        version, reserved, r, n, w = HEAD.unpack_from(buf, 0)
        if version not in (1, CHUNK_VERSION) or reserved:
            raise FormatError(f"llm chunk version {version} (reserved {reserved}) unsupported, expected "
                              f"1 or {CHUNK_VERSION}")
        if n == 0:
            if r or w or len(buf) != HEAD.size or out.size:
                raise FormatError(f"llm chunk: empty token stream but {out.size} bytes expected")
            return out
        if n > out.size or not (1 <= w <= self.max_window) or not (1 <= r <= min(self.batch, -(-n // w))):
            raise FormatError(f"llm chunk header is invalid: {n} tokens for {out.size} bytes, window {w} "
                              f"(max {self.max_window}), rows {r} (max {self.batch})")
        n_win = -(-n // w)
        batches = [list(range(s, min(n_win, s + r))) for s in range(0, n_win, r)]
        # version 1: per window (words, xxh32), one stream per window; version 2: per batch
        # words, then per window xxh32, one stream per batch
        n_streams = n_win if version == 1 else len(batches)
        pos = HEAD.size + (n_win * WIN.size if version == 1 else (n_streams + n_win) * U32.size)
        if pos > len(buf):
            raise FormatError(f"llm chunk: its tables of {n_win} windows need {pos} bytes, chunk holds {len(buf)}")
        if version == 1:
            table = [WIN.unpack_from(buf, HEAD.size + k * WIN.size) for k in range(n_win)]
            words, sums = [e[0] for e in table], [e[1] for e in table]
        else:
            words = [U32.unpack_from(buf, HEAD.size + 4 * k)[0] for k in range(n_streams)]
            sums = [U32.unpack_from(buf, HEAD.size + 4 * (n_streams + k))[0] for k in range(n_win)]
        total = sum(words) * 4
        if pos + total != len(buf):
            raise FormatError(f"llm chunk: streams announce {total} payload bytes, chunk holds {len(buf) - pos}")
        # Model and fingerprint check before any decoding work.
        self._check_fitted()
        bundle = self._loaded()
        lm = bundle[1]
        decoders = []
        for nw in words:
            decoders.append(constriction.stream.queue.RangeDecoder(
                np.frombuffer(buf[pos:pos + 4 * nw], "<u4").astype(np.uint32)))
            pos += 4 * nw
        windows = [np.zeros(min(w, n - k * w), np.int64) for k in range(n_win)]

        def one(i):
            b = batches[i]
            coders = [decoders[k] for k in b] if version == 1 else [decoders[i]] * len(b)
            self._run_batch([windows[k] for k in b], r, max(len(windows[k]) for k in b), coders, True,
                            bundle)

        try:
            self._pool_map(one, list(range(len(batches))))
        except (ValueError, RuntimeError, OverflowError, AssertionError) as exc:
            # constriction raises AssertionError on words that are invalid for the model.
            raise FormatError(f"llm chunk: range decoder failed ({type(exc).__name__}: {exc})") from None
        tb, lengths = lm.tokens.token_bytes, lm.tokens.lengths
        o = 0
        for k, (win, csum) in enumerate(zip(windows, sums)):
            size = int(lengths[win].sum())
            if o + size > out.size:
                raise FormatError(f"llm chunk: window {k} decodes past the chunk's {out.size} bytes")
            piece = b"".join(tb[t] for t in win)
            got = _xxh32(piece)
            if got != csum:
                raise ChecksumError(self._divergence(k, got, csum))
            out[o:o + size] = np.frombuffer(piece, np.uint8)
            o += size
        if o != out.size:
            raise FormatError(f"llm chunk decodes to {o} bytes, expected {out.size}")
        return out

    def _divergence(self, k: int, got: int, want: int) -> str:
        from .. import llm_model

        msg = (f"llm chunk: window {k} checksum of decoded bytes is {got:08x}, expected {want:08x} "
               f"(corrupt data, or the model evaluation differs from the encoder's")
        now = llm_model.versions()
        diff = {k2: (v, now.get(k2)) for k2, v in (self.versions or {}).items() if now.get(k2) != v}
        if diff:
            msg += "; library versions differ: " + ", ".join(f"{k2} {a} -> {b}" for k2, (a, b) in diff.items())
        return msg + ")"

    # -- inspect -----------------------------------------------------------------------
    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        """One stream, 'text': order-0 byte entropy beside the bits spent, per byte."""
        return [StreamStat("text", int(decoded.size), byte_entropy_bits(decoded), 8 * len(encoded))]
