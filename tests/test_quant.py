"""Quantized checkpoints: FP8, GPTQ-packed int4, int8+scales, GGUF (lossless), and the LOSSY pipeline."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import codec  # noqa: E402
from codec import datasets  # noqa: E402
from codec.api import compress_file, decompress_file, inspect, verify  # noqa: E402
from codec.errors import ChecksumError, FormatError  # noqa: E402
from codec.formats.nncfile import NncFile  # noqa: E402
from codec.gguf import GGUFError  # noqa: E402
from codec.transforms.int4 import PackedLayoutError  # noqa: E402

from conftest import sha256  # noqa: E402


def _roundtrip(src, tmp_path, **kw):
    out = tmp_path / (src.name + ".nnc")
    compress_file(src, out, overwrite=True, workers=2, **kw)
    back = tmp_path / (src.name + ".back")
    decompress_file(out, back, overwrite=True, workers=2)
    return out, back


def _codecs(nnc) -> dict[str, str]:
    return {r["name"]: r["config"]["id"] for r in inspect(nnc, entropy=False)["tensors"]}


def _minilm_subset(n=24):
    t = datasets.minilm_tensors("F32")
    return dict(list(t.items())[:n])


def _as_torch(dt, shape, raw):
    if dt == "F32":
        return torch.from_numpy(raw.view(np.float32).copy()).reshape(shape)
    if dt == "F16":
        return torch.from_numpy(raw.view(np.float16).copy()).reshape(shape).float()
    return None


@pytest.mark.parametrize("fmt,name", [(torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2")])
def test_fp8_casts_of_real_weights(tmp_path, fmt, name):
    tensors = {}
    for k, (dt, sh, raw) in _minilm_subset().items():
        t = _as_torch(dt, sh, raw)
        tensors["minilm." + k] = (name, sh, t.to(fmt).view(torch.uint8).numpy()) if t is not None else (dt, sh, raw)
    wh, _ = datasets.read_ct2(datasets.whisper_ct2_path())
    for k in ["encoder/position_encodings/encodings", "encoder/layer_0/ffn/linear_0/weight",
              "decoder/layer_0/self_attention/linear_0/weight"]:
        dt, sh, raw = wh[k]
        tensors["whisper." + k] = (name, sh, _as_torch(dt, sh, raw).to(fmt).view(torch.uint8).numpy())
    src = datasets.write_safetensors(tmp_path / "fp8.safetensors", tensors)
    nnc, back = _roundtrip(src, tmp_path)
    assert sha256(back) == sha256(src)
    ids = _codecs(nnc)
    assert ids["whisper.encoder/layer_0/ffn/linear_0/weight"] == "fp8"
    assert nnc.stat().st_size < src.stat().st_size * 0.8
    info = inspect(nnc)
    assert not any(r["lossy"] for r in info["tensors"]) and info["lossy"] is None
    # single frames too, and the tensor comes back bit-exact through codec.open
    x = tensors["whisper.encoder/layer_0/ffn/linear_0/weight"][2]
    assert codec.decompress(codec.compress(x, dtype=name)).tobytes() == x.tobytes()


def _gptq_pack(w: torch.Tensor, group: int = 128):
    """GPTQ-style int4 (asymmetric, per group along K) of a weight [N, K] -> qweight, qzeros, scales, g_idx."""
    W = w.t().contiguous()                    # [K, N]
    K, N = W.shape
    G = K // group
    Wg = W.reshape(G, group, N)
    lo, hi = Wg.amin(1).clamp(max=0), Wg.amax(1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    zero = torch.round(-lo / scale).clamp(0, 15)
    q = torch.clamp(torch.round(Wg / scale[:, None]) + zero[:, None], 0, 15).reshape(K, N).to(torch.int64)
    qweight = torch.zeros(K // 8, N, dtype=torch.int64)
    for j in range(8):
        qweight |= q[j::8] << (4 * j)
    zq = zero.to(torch.int64)                 # [G, N]
    qzeros = torch.zeros(G, N // 8, dtype=torch.int64)
    for j in range(8):
        qzeros |= zq[:, j::8] << (4 * j)
    to32 = (lambda t: t.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else t.to(torch.int32))
    return (to32(qweight).numpy(), to32(qzeros).numpy(), scale.to(torch.float16).numpy(),
            (torch.arange(K) // group).to(torch.int32).numpy())


def _gptq_file(tmp_path, names=2, corrupt=None):
    t = datasets.minilm_tensors("F32")
    tensors = {}
    for k in [k for k in t if k.endswith("intermediate.dense.weight")][:names]:
        dt, sh, raw = t[k]
        qw, qz, sc, gi = _gptq_pack(torch.from_numpy(raw.view(np.float32).copy()).reshape(sh))
        p = k[: -len("weight")]
        if corrupt == "qzeros":
            qz = qz[:, :-1].copy()
        if corrupt == "scales":
            sc = sc[:-1].copy()
        tensors.update({p + "qweight": ("I32", list(qw.shape), qw), p + "qzeros": ("I32", list(qz.shape), qz),
                        p + "scales": ("F16", list(sc.shape), sc), p + "g_idx": ("I32", list(gi.shape), gi)})
    return datasets.write_safetensors(tmp_path / "gptq.safetensors", tensors)


def test_gptq_packed_int4_roundtrip(tmp_path):
    src = _gptq_file(tmp_path)
    nnc, back = _roundtrip(src, tmp_path)
    assert sha256(back) == sha256(src)
    ids = _codecs(nnc)
    assert {v for k, v in ids.items() if k.endswith((".qweight", ".qzeros"))} == {"int4pack"}
    qw = [r for r in inspect(nnc)["tensors"] if r["name"].endswith(".qweight")][0]
    assert qw["ratio"] < 0.97        # RTN int4 codes are not uniform: entropy-coded below 4 bits
    with codec.open(nnc) as f:
        k = next(k for k in f.keys() if k.endswith("qweight"))
        assert f.get_tensor(k).dtype == np.int32


@pytest.mark.parametrize("corrupt", ["qzeros", "scales"])
def test_inconsistent_packed_tensors(tmp_path, corrupt):
    src = _gptq_file(tmp_path, names=1, corrupt=corrupt)
    with pytest.raises(PackedLayoutError, match=corrupt):
        compress_file(src, tmp_path / "x.nnc")
    assert not (tmp_path / "x.nnc").exists()


def test_int8_with_scales(tmp_path):
    tensors = {}
    for k, (dt, sh, raw) in list(datasets.minilm_tensors("F32").items())[:20]:
        if len(sh) != 2 or dt != "F32":
            continue
        w = torch.from_numpy(raw.view(np.float32).copy()).reshape(sh)
        s = w.abs().amax(1, keepdim=True) / 127
        q = torch.round(w / s).clamp(-127, 127).to(torch.int8)
        tensors[k] = ("I8", sh, q.numpy())
        tensors[k[:-len("weight")] + "weight_scale"] = ("F32", [sh[0], 1], s.numpy())
    src = datasets.write_safetensors(tmp_path / "int8.safetensors", tensors)
    nnc, back = _roundtrip(src, tmp_path)
    assert sha256(back) == sha256(src)
    assert nnc.stat().st_size < 0.95 * src.stat().st_size


def test_smollm2_gguf_roundtrip(tmp_path):
    src = datasets.smollm2_gguf_path()
    nnc, back = _roundtrip(src, tmp_path)
    assert sha256(back) == sha256(src)
    nf = NncFile(nnc)
    assert nf.manifest["container"] == "gguf"
    types = {e.dtype for e in nf.entries if e.role == "tensor"}
    assert {"GGUF_Q4_1", "GGUF_Q8_0", "F32"} <= types
    nf.close()
    assert nnc.stat().st_size < 0.93 * src.stat().st_size
    ids = _codecs(nnc)
    assert ids["blk.0.ffn_down.weight"] == "ggml"


# ---------------------------------------------------------------------------------------
# Hostile GGUF
# ---------------------------------------------------------------------------------------
def _gguf_bytes(tensors, kv=(("general.architecture", "test"),), version=3, align=32):
    """A minimal GGUF: tensors = [(name, dims, type_id, data bytes)]."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for k, v in kv:
        out += s(k) + struct.pack("<I", 8) + s(v)
    off, infos, datas = 0, b"", []
    for name, dims, tid, data in tensors:
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, off)
        datas.append(data + b"\0" * (-len(data) % align))
        off += len(datas[-1])
    out += infos
    out += b"\0" * (-len(out) % align)
    return out + b"".join(datas)


def _small_tensors():
    rng = np.random.default_rng(0)
    q40 = rng.integers(0, 256, 18 * 8, dtype=np.uint8).tobytes()        # 8 Q4_0 blocks
    f32 = rng.normal(size=64).astype(np.float32).tobytes()
    return [("a", [256], 2, q40), ("b", [64], 0, f32)]


def test_gguf_small_and_unknown_type_is_opaque(tmp_path):
    tensors = _small_tensors() + [("weird", [64], 99, b"\x07" * 100)]
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(tensors))
    nnc, back = _roundtrip(p, tmp_path)
    assert back.read_bytes() == p.read_bytes()
    names = [r["name"] for r in inspect(nnc, entropy=False)["tensors"]]
    assert "a" in names and "b" in names and "weird" not in names and "<bytes>" in names


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"GGUX" + b[4:], "magic"),
    (lambda b: b[:8] + struct.pack("<Q", 1 << 40) + b[16:], "tensor count"),
    (lambda b: b[:16] + struct.pack("<Q", 1 << 40) + b[24:], "key/value count"),
    (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "version"),
    (lambda b: b[:60], "past the end|needs|more than the file can hold"),
])
def test_malformed_gguf(tmp_path, mutate, match):
    p = tmp_path / "bad.gguf"
    p.write_bytes(mutate(_gguf_bytes(_small_tensors())))
    with pytest.raises(GGUFError, match=match):
        compress_file(p, tmp_path / "bad.nnc")


def test_gguf_tensor_past_end(tmp_path):
    t = _small_tensors()
    b = _gguf_bytes(t)
    p = tmp_path / "trunc.gguf"
    p.write_bytes(b[:-40])                # the F32 tensor's data is cut
    with pytest.raises(GGUFError, match="past the end"):
        compress_file(p, tmp_path / "t.nnc")


# ---------------------------------------------------------------------------------------
# LOSSY: quantize then entropy-code
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_file(tmp_path_factory):
    t = dict(list(datasets.minilm_tensors("BF16").items())[:12])
    return datasets.write_safetensors(tmp_path_factory.mktemp("lossy") / "m.safetensors", t)


@pytest.mark.parametrize("scheme,group", [("int8", 128), ("int4", 128), ("fp8", 64), ("int4", 32)])
def test_lossy_matches_torch_reference(tmp_path, bf16_file, scheme, group):
    from codec.quantize import eligible, reference

    nnc = tmp_path / "m.nnc"
    r = compress_file(bf16_file, nnc, lossy=scheme, group_size=group, workers=2)
    assert r.ratio < (0.6 if scheme != "int4" else 0.35)
    nf = NncFile(nnc)
    man = nf.manifest
    nf.close()
    assert man["lossy"]["scheme"] == scheme and man["lossy"]["group_size"] == group
    info = inspect(nnc, entropy=False)
    assert info["lossy"] and any(row["lossy"] for row in info["tensors"])
    out = tmp_path / "m.out.safetensors"
    decompress_file(nnc, out)                         # checks the recorded dequantized sha256
    assert sha256(out) == man["lossy"]["decoded_sha256"] != man["original_sha256"]
    assert verify(nnc).ok
    orig, _ = datasets.read_safetensors(bf16_file)
    back, _ = datasets.read_safetensors(out)
    n_q = 0
    for k, (dt, sh, raw) in orig.items():
        assert back[k][0] == dt and back[k][1] == sh
        if not eligible(dt, sh):
            assert back[k][2].tobytes() == raw.tobytes()
            continue
        n_q += 1
        x = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).reshape(sh)
        ref = reference(x, scheme, group).view(torch.int16).numpy()
        assert back[k][2].view(np.int16).reshape(sh).tobytes() == ref.tobytes(), k
        err = (x.float() - torch.from_numpy(back[k][2].view(np.int16).copy()).view(torch.bfloat16)
               .reshape(sh).float()).abs().max()
        assert err <= x.float().abs().max() * (0.2 if scheme == "int4" else 0.05)
    assert n_q > 0


def test_lossy_cli_inspect_and_tamper(tmp_path, bf16_file, capsys):
    from codec.cli import main

    nnc = tmp_path / "m.nnc"
    assert main(["compress", str(bf16_file), "-o", str(nnc), "--lossy", "int8", "--group-size", "64", "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(nnc), "--no-entropy"]) == 0
    text = capsys.readouterr().out
    assert "LOSSY" in text and "quant(int8,g=64)" in text
    # a manifest that claims another dequantized sha256 is refused (never reported as restored)
    nf = NncFile(nnc)
    man = dict(nf.manifest)
    nf.close()
    from codec.formats.nncfile import NncWriter  # noqa: F401
    data = bytearray(nnc.read_bytes())
    old = man["lossy"]["decoded_sha256"].encode()
    i = data.index(old)
    data[i:i + 64] = (b"0" * 64)
    from codec.checksum import xxh64
    m_off, m_len = struct.unpack_from("<QQ", data, len(data) - 32)
    struct.pack_into("<Q", data, len(data) - 16, xxh64(bytes(data[m_off:m_off + m_len])))
    nnc.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="LOSSY"):
        verify(nnc)


def test_lossy_refuses_non_safetensors(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(_small_tensors()))
    from codec.errors import CodecError

    with pytest.raises(CodecError, match="safetensors"):
        compress_file(p, tmp_path / "m.nnc", lossy="int8")


def test_lossy_output_does_not_depend_on_workers(tmp_path, bf16_file):
    # fits run on all workers before the frames are written: same bytes with 1 or 3 of them
    a, b = tmp_path / "a.nnc", tmp_path / "b.nnc"
    compress_file(bf16_file, a, lossy="int8", workers=1)
    compress_file(bf16_file, b, lossy="int8", workers=3)
    assert sha256(a) == sha256(b)
