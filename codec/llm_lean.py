"""A lean Llama-family forward pass for the LLM text coder: evaluation path `lean-llama-1`.

Why not `transformers`: the coder evaluates one token per window per step, in lockstep, for
thousands of steps. Through `transformers` each step pays Python overhead per layer and its
`DynamicCache` concatenates the whole KV cache on every step (a copy that grows with the
position), which made decoding ~3x slower than the matrix products it needs. Here the KV cache is
preallocated for the window, the q/k/v and gate/up projections are fused into one matrix each,
and a step is ~12 torch calls per layer.

The path (normative: the bits of an `llm` frame with eval_path `lean-llama-1` depend on it):
- weights as stored in the model folder's safetensors, cast once to the *weight dtype*
  (`float32` or `bfloat16`); every linear layer multiplies activations cast to that dtype;
- activations between layers, RMSNorm (float32 mean of squares, `x * rsqrt(ms + eps)`, times the
  weight), rotary embeddings (`rotate_half` convention, float32 cos/sin of `position * inv_freq`),
  attention scores, softmax and the residual stream in float32;
- attention over the cached positions 0..t of the window (no mask needed: every row is at the
  same position), grouped-query heads shared as in Llama;
- logits = final RMSNorm, then the LM head (the tied embedding when `tie_word_embeddings`), as
  float32 [rows, vocab].
Supported configs: `model_type` "llama" with SiLU MLP, no biases, default RoPE. Anything else
is reported by `unsupported()` and the coder uses the `transformers` path instead.

Speed: each step streams every weight once per row group, and at the small row counts of a
coder step `F.linear` on bfloat16 spends more than half its time re-blocking the weight matrix for
oneDNN on every call. Weights are therefore also kept pre-blocked (`torch.ops.mkldnn` for
bfloat16, `torch.ops.mkl` for float32), which runs the same kernels on the same blocks, so the
result is the same bits. That is checked, not assumed: each session first runs every weight shape
both ways on random rows of its own row count and uses the pre-blocked form only if all outputs
are bit-identical (`tests/test_llm.py` holds whole steps to the plain path as well). The
pre-blocked copy doubles the weights' memory (270 MB more for SmolLM2-135M in bfloat16).
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

EVAL_PATH = "lean-llama-1"
_PACK_ROWS = 16      # row count the weights are blocked for (a layout hint; any row count works)


def _rope_theta(cfg: dict) -> tuple[float | None, str]:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kinds = {params.get("rope_type"), scaling.get("rope_type"), scaling.get("type")} - {None, "default"}
    kind = ",".join(sorted(kinds)) if kinds else "default"     # any scaling: not the plain path
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    return (float(theta) if theta is not None else None), kind


def unsupported(cfg: dict) -> str | None:
    """Why this config cannot take the lean path (None when it can)."""
    if cfg.get("model_type") != "llama":
        return f"model_type {cfg.get('model_type')!r} is not 'llama'"
    if cfg.get("hidden_act", "silu") != "silu":
        return f"activation {cfg.get('hidden_act')!r}"
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        return "biases in attention or MLP"
    theta, kind = _rope_theta(cfg)
    if kind != "default" or theta is None:
        return f"RoPE type {kind!r}"
    if cfg.get("pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    if not (isinstance(heads, int) and isinstance(kv, int) and heads > 0 and kv > 0 and heads % kv == 0):
        return f"attention heads {heads!r} / key-value heads {kv!r}"
    return None


class LeanLlama:
    """Weights of a Llama causal LM laid out for single-token lockstep steps."""

    def __init__(self, tensors: dict, cfg: dict, weight_dtype: str):
        import torch

        reason = unsupported(cfg)
        if reason:
            raise ValueError(f"lean path unsupported: {reason}")
        self.torch = torch
        self.wdt = getattr(torch, weight_dtype)
        self.hidden = int(cfg["hidden_size"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.n_kv = int(cfg.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(cfg.get("head_dim") or self.hidden // self.n_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.vocab = int(cfg["vocab_size"])
        theta, _ = _rope_theta(cfg)
        d = self.head_dim
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))

        def get(name):
            t = tensors.get(name)
            if t is None:
                raise ValueError(f"lean path: weight {name!r} missing")
            return t

        def w(name):
            return get(name).to(self.wdt).contiguous()

        tied = bool(cfg.get("tie_word_embeddings", False))
        embed = tensors.get("model.embed_tokens.weight")
        if embed is None and tied:   # savers keep one name of a tied pair (safetensors' save_model)
            embed = tensors.get("lm_head.weight")
        if embed is None:
            raise ValueError("lean path: weight 'model.embed_tokens.weight' missing")
        self.embed = embed.to(self.wdt).contiguous()
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            self.layers.append((
                get(p + "input_layernorm.weight").float(),
                torch.cat([w(p + "self_attn.q_proj.weight"), w(p + "self_attn.k_proj.weight"),
                           w(p + "self_attn.v_proj.weight")]).contiguous(),
                w(p + "self_attn.o_proj.weight"),
                get(p + "post_attention_layernorm.weight").float(),
                torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]).contiguous(),
                w(p + "mlp.down_proj.weight"),
            ))
        self.norm = get("model.norm.weight").float()
        head = tensors.get("lm_head.weight")
        if head is None or tied:
            self.lm_head = self.embed
        else:
            self.lm_head = head.to(self.wdt).contiguous()
        self.intermediate = self.layers[0][4].shape[0] // 2
        self._packed = None          # pre-blocked weights, built on first use (see module doc)
        self._fast_rows: dict[int, bool] = {}
        self._pack_lock = threading.Lock()   # lanes open sessions from several threads

    # -- pre-blocked weights -----------------------------------------------------------
    def _pack(self, w):
        torch = self.torch
        if self.wdt == torch.bfloat16:
            return torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS)
        return torch.ops.mkl._mkl_reorder_linear_weight(w, _PACK_ROWS)

    def _packed_linear(self, x, w, packed):
        torch = self.torch
        if self.wdt == torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return torch.ops.mkl._mkl_linear(x, packed, w, None, _PACK_ROWS)

    def _ensure_packed(self) -> bool:
        if self._packed is None:
            try:
                self._packed = {id(w): self._pack(w) for w in self._weights()}
            except (RuntimeError, AttributeError, NotImplementedError):
                self._packed = {}         # this torch build has no such kernels: plain F.linear
        return bool(self._packed)

    def _weights(self):
        for layer in self.layers:
            yield from (layer[1], layer[2], layer[4], layer[5])
        yield self.lm_head

    def linear_for(self, rows: int):
        """`linear(x, w)` for sessions of `rows` rows: pre-blocked when provably the same bits.

        Checked per row count and per torch thread count of the calling thread (call it where
        the session will run)."""
        F = self.torch.nn.functional
        key = (rows, self.torch.get_num_threads())
        with self._pack_lock:
            ok = self._fast_rows.get(key)
            if ok is None:
                ok = self._ensure_packed() and self._probe(rows)
                self._fast_rows[key] = ok
        if not ok:
            return F.linear
        packed, fast = self._packed, self._packed_linear
        return lambda x, w: fast(x, w, packed[id(w)])

    def _probe(self, rows: int) -> bool:
        torch = self.torch
        F = torch.nn.functional
        gen = torch.Generator().manual_seed(rows)
        seen = set()
        for w in self._weights():
            if w.shape in seen:
                continue
            seen.add(w.shape)
            x = torch.randn(rows, w.shape[1], generator=gen).to(self.wdt)
            try:
                fast = self._packed_linear(x, w, self._packed[id(w)])
            except (RuntimeError, NotImplementedError):
                return False
            plain = F.linear(x, w)
            if fast.dtype != plain.dtype or fast.shape != plain.shape or not torch.equal(
                    fast.contiguous().view(torch.int16 if plain.element_size() == 2 else torch.int32),
                    plain.contiguous().view(torch.int16 if plain.element_size() == 2 else torch.int32)):
                return False
        return True

    @classmethod
    def from_folder(cls, folder: Path, weight_dtype: str) -> "LeanLlama":
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"lean path: no safetensors weights in {folder}")
        tensors = {}
        for f in files:
            tensors.update(load_file(str(f)))
        return cls(tensors, cfg, weight_dtype)

    def session(self, rows: int, length: int, fast: bool = True) -> "Session":
        return Session(self, rows, length, fast)


class Session:
    """KV cache of `rows` windows of up to `length` tokens; `step` advances all rows by one."""

    def __init__(self, m: LeanLlama, rows: int, length: int, fast: bool = True):
        torch = m.torch
        self.m = m
        self.rows = rows
        self.linear = m.linear_for(rows) if fast else torch.nn.functional.linear
        shape = (m.n_layers, rows, m.n_kv, length, m.head_dim)
        # uninitialised: step t reads positions 0..t only, all written before
        self.k = torch.empty(shape, dtype=torch.float32)
        self.v = torch.empty(shape, dtype=torch.float32)
        pos = torch.arange(length, dtype=torch.float32)[:, None] * m.inv_freq[None, :]
        emb = torch.cat([pos, pos], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.scale = 1.0 / math.sqrt(m.head_dim)

    def _norm(self, x, weight):
        torch = self.m.torch
        ms = x.pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(ms + self.m.eps)) * weight

    def _rope(self, x, t):
        half = x.shape[-1] // 2
        rot = self.m.torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos[t] + rot * self.sin[t]

    def step(self, ids, t: int):
        """Logits [rows, vocab] (float32) of the next token, given token ids [rows] at position t."""
        m, torch = self.m, self.m.torch
        F = torch.nn.functional
        R, H, KV, D = self.rows, m.n_heads, m.n_kv, m.head_dim
        G = H // KV
        wdt = m.wdt
        linear = self.linear
        x = m.embed[ids].float()
        for li, (ln1, wqkv, wo, ln2, wgu, wd) in enumerate(m.layers):
            qkv = linear(self._norm(x, ln1).to(wdt), wqkv).float()
            q = self._rope(qkv[:, :H * D].view(R, KV, G, D), t)
            k = self._rope(qkv[:, H * D:(H + KV) * D].view(R, KV, D), t)
            self.k[li, :, :, t] = k
            self.v[li, :, :, t] = qkv[:, (H + KV) * D:].view(R, KV, D)
            keys = self.k[li, :, :, :t + 1]                       # [R, KV, t+1, D]
            scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scale   # [R, KV, G, t+1]
            att = torch.matmul(torch.softmax(scores, dim=-1), self.v[li, :, :, :t + 1])
            x = x + linear(att.reshape(R, H * D).to(wdt), wo).float()
            gu = linear(self._norm(x, ln2).to(wdt), wgu).float()
            g, u = gu[:, :m.intermediate], gu[:, m.intermediate:]
            x = x + linear((F.silu(g) * u).to(wdt), wd).float()
        return linear(self._norm(x, m.norm).to(wdt), m.lm_head).float()
