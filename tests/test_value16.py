"""`value16` codec (order-0 rANS on the 16-bit BF16 value): round trips, corruption, level max vs bound."""
import json

import numpy as np
import pytest

import codec
from codec.entropy.value16 import Value16, decode_table, quantize_freqs
from codec.errors import ChecksumError, FormatError
from codec.registry import get_codec
from codec.source import ArraySource
from codec.stats import entropy_bits_of_counts

SPECIALS = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F,
                     0x0080, 0x7F7F, 0xFF7F, 0xFFFF], np.uint16)


def weights(n, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 0.02, n).astype(np.float32).view(np.uint32)
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)


def roundtrip(v, **kw):
    b = np.ascontiguousarray(v, np.uint16).view(np.uint8)
    c = Value16(**kw).fit(ArraySource(b), "BF16")
    c2 = get_codec(json.loads(json.dumps(c.get_config())))
    enc = c.encode(b)
    out = np.empty(b.size, np.uint8)
    c2.decode(enc, out)
    assert np.array_equal(out, b)
    return c, enc


@pytest.mark.parametrize("n", [0, 1, 3, 7, 1001])
def test_roundtrip_sizes_and_specials(n):
    v = np.concatenate([weights(n, n), SPECIALS])
    for r in (None, 0, 3, 7):
        roundtrip(v, low_bits=r)
    roundtrip(weights(n, 1)) if n else None


def test_empty_and_single_symbol():
    roundtrip(np.zeros(0, np.uint16))
    c, enc = roundtrip(np.full(5000, 0x3F80, np.uint16))
    assert len(enc) <= 8 + (5000 * 7 + 7) // 8
    f = codec.compress(np.full(1000, 0x3F80, np.uint16), level="max", dtype="BF16")
    assert np.array_equal(codec.decompress(f), np.full(1000, 0x3F80, np.uint16))


def test_chunks_and_determinism():
    v = weights(300_001, 5)
    a = codec.compress(v, codec="value16", dtype="BF16", chunk_size=65536)
    b = codec.compress(v, codec="value16", dtype="BF16", chunk_size=65536, workers=2)
    assert a == b
    assert np.array_equal(codec.decompress(a), v)
    c = codec.compress(v, level="max", dtype="BF16")
    assert np.array_equal(codec.decompress(c), v)


def test_quantize_freqs():
    c = np.array([0, 5, 1, 1000000, 0, 3], np.int64)
    for p in (8, 12, 24):
        f = quantize_freqs(c, p)
        assert int(f.sum()) == 1 << p and (f[c > 0] >= 1).all() and (f[c == 0] == 0).all()


def test_corruption_never_crashes():
    v = weights(20_000, 2)
    b = v.view(np.uint8)
    c, enc = roundtrip(v)
    rng = np.random.default_rng(0)
    out = np.empty(b.size, np.uint8)
    for t in range(60):
        bad = bytearray(enc)
        if t % 3 == 0:
            bad = bad[: rng.integers(0, len(bad))]
        else:
            for _ in range(1 + t % 4):
                bad[rng.integers(0, len(bad))] ^= 1 << int(rng.integers(8))
        try:
            c.decode(bytes(bad), out)
        except FormatError:
            pass
    frame = bytearray(codec.compress(v, codec="value16", dtype="BF16"))
    for pos in range(len(frame) - 1, len(frame) - 400, -37):
        bad = bytearray(frame)
        bad[pos] ^= 0x10
        try:
            r = codec.decompress(bytes(bad))
            assert np.array_equal(r, v)
        except (FormatError, ChecksumError):
            pass


def test_bad_tables():
    for t in ("", "!!!", "0", 5):
        with pytest.raises(FormatError):
            decode_table(t, 16, 65536)
    with pytest.raises(FormatError):
        Value16.from_config({"id": "value16", "low_bits": 9, "precision": 16, "table": None})
    with pytest.raises(FormatError):
        Value16.from_config({"id": "value16", "low_bits": 0, "precision": 16, "table": None, "x": 1})


def test_level_max_minilm_within_bound():
    from codec import datasets

    tensors = datasets.minilm_tensors("BF16")
    total = bound = got = 0
    for name, (dt, shape, raw) in tensors.items():
        total += raw.size
        if dt != "BF16":
            continue
        v = raw.view("<u2")
        bound += entropy_bits_of_counts(np.bincount(v, minlength=65536)) / 8
        f = codec.compress(v, level="max", dtype="BF16")
        got += len(f)
        if raw.size > 1_000_000:
            assert np.array_equal(codec.decompress(f), v)
    assert got / total - bound / total < 0.003, (got / total, bound / total)
