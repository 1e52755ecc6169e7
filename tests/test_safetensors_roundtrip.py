"""Byte-exact file round trips: real weights, every dtype, odd shapes, opaque files."""
from __future__ import annotations

import os

import numpy as np
import pytest

import codec
from codec import datasets
from conftest import bits_equal, sha256


def roundtrip(path, tmp_path, **kw):
    out = tmp_path / (path.name + ".nnc")
    back = tmp_path / ("restored-" + path.name)
    before = sha256(path)
    r = codec.compress_file(path, out, **kw)
    assert r.original_size == path.stat().st_size
    assert out.stat().st_size == r.compressed_size
    codec.decompress_file(out, back)
    assert sha256(back) == before
    assert sha256(path) == before, "the input was modified"
    return out


@pytest.mark.parametrize("fixture", ["minilm_f32", "minilm_bf16", "minilm_f16", "whisper_f16"])
def test_real_weights_roundtrip(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    out = roundtrip(path, tmp_path, workers=2)
    assert out.stat().st_size < path.stat().st_size
    # the lazy reader agrees with safetensors itself, bit for bit
    from safetensors.numpy import load_file

    ref = None if "bf16" in fixture else load_file(str(path))
    with codec.open(out) as f:
        tensors, _ = datasets.read_safetensors(path)
        assert sorted(f.keys()) == sorted(tensors)
        for name in list(tensors)[:10]:
            got = f.get_tensor(name)
            dt, shape, raw = tensors[name]
            assert list(got.shape) == shape
            assert got.reshape(-1).view(np.uint8).tobytes() == raw.tobytes()
            if ref is not None:
                assert bits_equal(got, ref[name])
    # everything at once, in file order, with the threads sharing every tensor's chunks
    loaded = codec.load_file(out, workers=2)
    assert list(loaded) == list(tensors)
    for name, (dt, shape, raw) in tensors.items():
        assert list(loaded[name].shape) == shape
        assert loaded[name].reshape(-1).view(np.uint8).tobytes() == raw.tobytes(), name


def test_every_dtype_and_shape(tmp_path):
    rng = np.random.default_rng(1)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3.4e38], np.float32)
    nan_payload = np.array([0x7FC00001, 0xFFC12345, 0x7F800001], np.uint32).view(np.float32)
    t = {
        "bool": ("BOOL", [7], rng.integers(0, 2, 7).astype(np.bool_)),
        "u8": ("U8", [3, 5], rng.integers(0, 255, 15).astype(np.uint8)),
        "i8": ("I8", [9], rng.integers(-128, 127, 9).astype(np.int8)),
        "u16": ("U16", [4], rng.integers(0, 65535, 4).astype(np.uint16)),
        "i16": ("I16", [4], rng.integers(-9, 9, 4).astype(np.int16)),
        "u32": ("U32", [2, 2], rng.integers(0, 2**32 - 1, 4, dtype=np.uint64).astype(np.uint32)),
        "i32": ("I32", [3], np.array([-1, 0, 2**31 - 1], np.int32)),
        "u64": ("U64", [2], np.array([0, 2**64 - 1], np.uint64)),
        "i64": ("I64", [2], np.array([-2**63, 2**63 - 1], np.int64)),
        "f16": ("F16", [8], specials.astype(np.float16)),
        "bf16": ("BF16", [8], datasets.f32_to_bf16_bits(specials)),
        "f32": ("F32", [11], np.concatenate([specials, nan_payload])),
        "f64": ("F64", [8], specials.astype(np.float64)),
        "e4m3": ("F8_E4M3", [6], rng.integers(0, 255, 6).astype(np.uint8)),
        "e5m2": ("F8_E5M2", [6], rng.integers(0, 255, 6).astype(np.uint8)),
        "future": ("F4_E2M1", [3], np.array([1, 2, 3], np.uint8)),  # unknown dtype: opaque bytes
        "empty": ("F32", [0, 4], np.zeros(0, np.float32)),
        "scalar": ("F64", [], np.array([3.25], np.float64)),
        "odd": ("BF16", [1001], rng.integers(0, 65535, 1001).astype(np.uint16)),
    }
    src = datasets.write_safetensors(tmp_path / "all.safetensors", t, {"k": "v", "empty": ""})
    out = roundtrip(src, tmp_path, chunk_size=64)
    with codec.open(out) as f:
        assert f.metadata() == {"k": "v", "empty": ""}
        for name, (dt, shape, arr) in t.items():
            got = f.get_tensor(name)
            assert got.reshape(-1).view(np.uint8).tobytes() == np.ascontiguousarray(arr).tobytes(), name
            if dt != "F4_E2M1":
                assert list(got.shape) == shape
        import torch

        assert f.get_tensor("bf16", framework="pt").dtype == torch.bfloat16
        assert f.get_tensor("e4m3", framework="pt").dtype == torch.float8_e4m3fn
        assert f.get_tensor("scalar", framework="pt").shape == ()
        assert bits_equal(f.get_tensor("bf16", framework="pt").view(torch.uint16).numpy(), t["bf16"][2])


@pytest.mark.parametrize("codec_id", ["raw", "zstd", "auto"])
def test_codecs_roundtrip_file(small_safetensors, tmp_path, codec_id):
    out = roundtrip(small_safetensors, tmp_path, codec=codec_id)
    info = codec.inspect(out)
    tensors = [t for t in info["tensors"] if t["role"] == "tensor"]
    assert len(tensors) == 3
    if codec_id != "auto":
        assert all(t["config"]["id"] == codec_id for t in tensors)


def test_opaque_file_and_empty_file(tmp_path):
    data = os.urandom(3000) + b"\0" * 100_000
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    out = roundtrip(p, tmp_path, chunk_size=4096)
    assert codec.inspect(out)["container"] == "bytes"
    e = tmp_path / "empty.bin"
    e.write_bytes(b"")
    roundtrip(e, tmp_path)


def test_deterministic_output(small_safetensors, tmp_path):
    a = tmp_path / "a.nnc"
    b = tmp_path / "b.nnc"
    codec.compress_file(small_safetensors, a, workers=1, chunk_size=128)
    codec.compress_file(small_safetensors, b, workers=2, chunk_size=128)
    assert sha256(a) == sha256(b)


def test_refuses_overwrite_and_writes_atomically(small_safetensors, tmp_path):
    out = tmp_path / "x.nnc"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        codec.compress_file(small_safetensors, out)
    assert out.read_bytes() == b"keep me"
    codec.compress_file(small_safetensors, out, overwrite=True)
    assert codec.verify(out).ok
    # no temp files left behind, input intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors", "x.nnc"]


def test_failed_compress_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ")
    with pytest.raises(codec.FormatError):
        codec.compress_file(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_lazy_reader_reads_only_the_tensor(minilm_f32, tmp_path, monkeypatch):
    out = tmp_path / "m.nnc"
    codec.compress_file(minilm_f32, out)
    read = []
    real_pread = os.pread

    def counting(fd, n, off):
        data = real_pread(fd, n, off)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting)
    with codec.open(out) as f:
        opened = sum(read)
        t = f.get_tensor("encoder.layer.0.attention.self.query.bias")
    assert t.shape == (384,)
    assert sum(read) - opened < 16 << 10, "reading a 1.5 KB tensor must not read the file"
    assert opened < 64 << 10


def test_in_memory_api(tmp_path):
    import torch

    x = np.random.default_rng(3).standard_normal((33, 17)).astype(np.float32)
    for c in ("auto", "zstd", "raw", {"id": "zstd", "level": 19}):
        assert bits_equal(codec.decompress(codec.compress(x, codec=c)), x)
    t = torch.randn(100, 3).to(torch.bfloat16)
    back = codec.decompress(codec.compress(t), framework="pt")
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), t.view(torch.int16))
    assert codec.decompress(codec.compress(b"hello" * 100)).tobytes() == b"hello" * 100
    assert codec.decompress(codec.compress(np.zeros(0, np.int8))).size == 0
    s = codec.decompress(codec.compress(np.float64(2.5).reshape(())))
    assert s.shape == () and s.item() == 2.5
    with pytest.raises(TypeError):
        codec.compress([1, 2, 3])
    with pytest.raises(codec.UnknownCodecError):
        codec.compress(x, codec="nope")


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_for_each_runs_every_item_once(workers):
    import threading

    from codec.formats.frame import for_each

    seen, threads, lock = [], set(), threading.Lock()

    def fn(i):
        with lock:
            seen.append(i)
            threads.add(threading.get_ident())

    for_each(fn, range(200, 0, -1), workers)
    assert sorted(seen) == list(range(1, 201))
    assert len(threads) <= workers


def test_for_each_raises_the_first_error_after_all_threads_stop():
    import threading

    from codec.errors import FormatError
    from codec.formats.frame import for_each

    started, lock = [], threading.Lock()

    def fn(i):
        with lock:
            started.append(i)
        if i == 50:
            raise FormatError("chunk 50 is corrupt")

    with pytest.raises(FormatError, match="chunk 50"):
        for_each(fn, range(100), 2)
    assert 50 in started and len(started) == len(set(started))


def test_frame_decode_with_workers_matches(tmp_path):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(300_000) * 0.02).astype(np.float32)
    frame = codec.compress(x, chunk_size=1 << 16)
    for w in (1, 2, 4):
        y = codec.decompress(frame, workers=w)
        assert bits_equal(x, y)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_payload_checksum_outranks_chunk_errors_with_threads(workers):
    # with several threads the payload's checksum runs beside the chunk decodes; a corrupt
    # payload must still be reported as such, whatever the chunks raise meanwhile
    from codec.errors import ChecksumError
    from codec.formats.frame import SEC_PAYLOAD, parse_frame

    rng = np.random.default_rng(9)
    x = (rng.standard_normal(200_000) * 0.02).astype(np.float32)
    frame = bytearray(codec.compress(x, chunk_size=1 << 16))
    fr = parse_frame(bytes(frame))
    sec = fr.sections[SEC_PAYLOAD]
    for rel in (10, sec.length // 2, sec.length - 3):
        bad = bytearray(frame)
        bad[sec.offset + rel] ^= 0x40
        with pytest.raises(ChecksumError, match="payload"):
            codec.decompress(bytes(bad), workers=workers)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_load_file_and_get_tensors(small_safetensors, tmp_path, workers):
    # every tensor at once, chunks of all of them on the shared workers, in file order
    import torch

    out = tmp_path / "s.nnc"
    codec.compress_file(small_safetensors, out, chunk_size=256)
    tensors, _ = datasets.read_safetensors(small_safetensors)
    got_np = codec.load_file(out, workers=workers)
    got_pt = codec.load_file(out, framework="pt", workers=workers)
    assert list(got_np) == list(got_pt) == list(tensors)
    for name, (dt, shape, raw) in tensors.items():
        assert got_np[name].reshape(-1).view(np.uint8).tobytes() == raw.tobytes()
        t = got_pt[name]
        assert isinstance(t, torch.Tensor) and list(t.shape) == shape
        assert t.reshape(-1).view(torch.uint8).numpy().tobytes() == raw.tobytes()
        assert t.data_ptr() % 64 == 0 or t.numel() == 0     # torch's own alignment
    with codec.open(out, workers=workers) as f:
        some = f.get_tensors(["ids", "w"])
        assert list(some) == ["ids", "w"]
        assert some["w"].tobytes() == got_np["w"].tobytes()
        with pytest.raises(KeyError, match="nope"):
            f.get_tensors(["nope"])


def test_decode_frames_many_frames_and_bad_outputs():
    from codec.formats.frame import decode_frames, parse_frame

    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal(n) * 0.02).astype(np.float32) for n in (0, 1, 1000, 70_000, 300_000)]
    frames = [parse_frame(codec.compress(x, chunk_size=1 << 16)) for x in xs]
    for w in (1, 2, 3):
        outs = decode_frames(frames, workers=w)
        assert all(o.tobytes() == x.tobytes() for o, x in zip(outs, xs))
    given = [np.full(fr.decoded_size, 7, np.uint8) for fr in frames]
    assert decode_frames(frames, given, workers=2) is not given
    assert all(o.tobytes() == x.tobytes() for o, x in zip(given, xs))
    with pytest.raises(ValueError, match="outputs for"):
        decode_frames(frames, given[:2])
    with pytest.raises(ValueError, match="flat uint8"):
        decode_frames(frames[3:4], [np.empty(frames[3].decoded_size, np.int8)])


def test_codec_registry_loads_once_under_threads(tmp_path):
    # the first codec lookups of a process may come from several decoding threads at once
    import subprocess
    import sys

    code = ("import threading, codec.registry as r\n"
            "errs = []\n"
            "def go():\n"
            "    try: r.get_codec('exponent'); r.get_codec('bytegroup')\n"
            "    except Exception as e: errs.append(e)\n"
            "ts = [threading.Thread(target=go) for _ in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "assert not errs, errs\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
