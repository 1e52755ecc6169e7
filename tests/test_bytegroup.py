"""`bytegroup` codec (ZipNN layout): round trips over dtypes, reference, corruption."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec import _reference as ref
from codec.errors import FormatError
from codec.registry import get_codec
from codec.source import ArraySource
from codec.transforms.bytegroup import ByteGroup

DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64,
          "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
          "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}


def sample(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    npd = np.dtype(DTYPES[dtype])
    if dtype in ("F16", "F32", "F64"):
        v = rng.normal(0, 0.02, n).astype(npd)
        sp = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(npd).tiny / 4, -np.finfo(npd).max], npd)
        v[: min(n, sp.size)] = sp[: min(n, sp.size)]
        if n > 8:  # NaN payload
            u = v.view(np.dtype(f"u{npd.itemsize}"))
            u[7] = (u[4] | 1)
        return v
    if dtype == "BF16":
        return (rng.normal(0, 0.02, n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    info = np.iinfo(npd)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), n, endpoint=True).astype(npd)


def roundtrip(dtype, values, chunk=8192, **kw):
    b = values.view(np.uint8).reshape(-1)
    c = ByteGroup(**kw).fit(ArraySource(b), dtype)
    c2 = get_codec(json.loads(json.dumps(c.get_config())))
    total = 0
    for off in range(0, b.size, chunk):
        ch = b[off:off + chunk]
        e = c.encode(ch)
        out = np.empty_like(ch)
        c2.decode(e, out)
        assert np.array_equal(out, ch)
        assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), ch.size), ch) if off == 0 else True
        total += len(e)
    return c, total


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("n", [0, 1, 7, 3001])
def test_roundtrip_dtypes(dtype, n):
    roundtrip(dtype, sample(dtype, n))


def test_odd_tail_and_zstd_modes():
    v = sample("F32", 1000).view(np.uint8)[:-3]  # not a multiple of the item size
    for z in ("always", "never"):
        c = ByteGroup(itemsize=4, rotate=1, zstd=z)
        e = c.encode(v)
        out = np.empty_like(v)
        c.decode(e, out)
        assert np.array_equal(out, v)
        assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), v.size), v)


def test_compresses_floats_and_ints():
    _, t = roundtrip("F32", sample("F32", 20000))
    assert t < 0.85 * 80000
    _, t = roundtrip("I64", np.arange(20000, dtype=np.int64))
    assert t < 0.2 * 160000


def test_deterministic():
    v = sample("F16", 5000, 3)
    c = ByteGroup().fit(ArraySource(v.view(np.uint8)), "F16")
    assert c.encode(v.view(np.uint8)) == c.encode(v.copy().view(np.uint8))


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.sampled_from([1, 2, 4, 8]), st.integers(0, 7))
def test_property_bytes(data, itemsize, rot):
    b = np.frombuffer(data, np.uint8)
    c = ByteGroup(itemsize=itemsize, rotate=rot % (8 * itemsize), zstd="always")
    e = c.encode(b)
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["flip", "truncate"]))
def test_corruption(seed, how):
    rng = np.random.default_rng(seed)
    dtype = ["F32", "F16", "I32"][seed % 3]
    v = sample(dtype, 2000, seed % 5).view(np.uint8)
    c = ByteGroup().fit(ArraySource(v), dtype)
    e = bytearray(c.encode(v))
    if how == "flip":
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(0, len(e)))
            e[i] ^= 1 << int(rng.integers(0, 8))
    else:
        e = e[: int(rng.integers(0, len(e)))]
    out = np.empty_like(v)
    try:
        c.decode(bytes(e), out)
    except FormatError:
        pass


def test_real_weights_f32():
    from benches_data import minilm_f32_tensors

    ts = minilm_f32_tensors(2)
    if not ts:
        pytest.skip("MiniLM package not installed")
    for f in ts:
        _, t = roundtrip("F32", f, chunk=1 << 18)
        assert t < 0.86 * f.nbytes


def test_real_weights_f32_widened_from_bf16():
    # an F32 checkpoint of a BF16 model: planes 0 (signs over zeros) and 1 (zeros) take method 4,
    # so the file costs what its BF16 bits cost (1.0's Huffman floor of 1 bit a byte cost 3 points)
    from benches_data import minilm_bf16_tensors

    ts = minilm_bf16_tensors(2)
    if not ts:
        pytest.skip("MiniLM package not installed")
    for bf in ts:
        f = (bf.astype(np.uint32) << np.uint32(16)).view(np.float32)
        c, t = roundtrip("F32", f, chunk=1 << 18)
        e = c.encode(f.view(np.uint8)[:1 << 18])
        assert _methods(e, 4)[:2] == [4, 4]
        assert t < 0.345 * f.nbytes


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "I32", "F64"])
def test_numba_and_python_paths_agree(dtype):
    v = sample(dtype, 5003, 2).view(np.uint8)
    c = ByteGroup().fit(ArraySource(v), dtype)
    e = c.encode(v)
    assert bytes(c.encode_buffer(v)) == e
    a = np.empty_like(v)
    c.decode(e, a)
    b = np.empty_like(v)
    c._decode_py(np.frombuffer(e, np.uint8), np.empty((c.itemsize, v.size // c.itemsize), np.uint8), b, "x")
    assert np.array_equal(a, v) and np.array_equal(b, v)
    # every single-byte truncation / header flip fails cleanly on the fast path
    out = np.empty_like(v)
    for bad in (e[:-1], e + b"\0", bytes([7]) + e[1:], e[:1] + b"\xff\xff\xff\x7f" + e[5:]):
        with pytest.raises(FormatError):
            c.decode(bad, out)


def _methods(e, s):
    return [e[5 * p] for p in range(s)]


@pytest.mark.parametrize("n", [8, 1001, 5003, 131072])
def test_f16_high_plane_takes_huffman7(n):
    # F16's high byte starts with the incompressible sign: method 3 codes the low 7 bits and
    # stores the sign raw, about the same size as method 1 but faster to decode
    v = sample("F16", n, 4)
    b = v.view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = c.encode(b)
    if n >= 1001:
        assert _methods(e, 2)[1] == 3
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)
    slow = np.empty_like(b)
    c._decode_py(np.frombuffer(e, np.uint8), np.empty((2, b.size // 2), np.uint8), slow, "x")
    assert np.array_equal(slow, b)


def test_huffman7_top_bit_map_checked():
    v = sample("F16", 5003, 4)
    b = v.view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = bytearray(c.encode(b))
    assert _methods(e, 2)[1] == 3
    n = b.size // 2
    ln1 = int(np.frombuffer(bytes(e[6:10]), "<u4")[0])
    # a plane length shorter than its top-bit map, keeping the payload size consistent
    bad = bytearray(e)
    bad[6:10] = np.uint32((n + 7) // 8 - 1).tobytes()
    out = np.empty_like(b)
    with pytest.raises(FormatError):
        c.decode(bytes(bad), out)
    with pytest.raises(FormatError):
        c._decode_py(np.frombuffer(bytes(bad), np.uint8), np.empty((2, n), np.uint8), out, "x")
    # every flip in the top-bit map changes exactly that value's sign bit (raw bits, no checksum
    # at this level: the frame's chunk checksum catches it)
    off = 10 + int(np.frombuffer(bytes(e[1:5]), "<u4")[0])
    for i in (0, 7, 100):
        flip = bytearray(e)
        flip[off + i] ^= 0x80
        c.decode(bytes(flip), out)
        diff = np.flatnonzero(out != b)
        assert list(diff) == [2 * (8 * i) + 1]
    assert ln1 > (n + 7) // 8
    # a method past the last one
    bad = bytearray(e)
    bad[5] = 5
    with pytest.raises(FormatError, match="unknown method"):
        c.decode(bytes(bad), out)


def _expected_planes(b, c):
    """What the encoder must choose per plane, from numpy alone: planes by rotating whole values,
    counts by bincount, block sizes by huffman.block_lengths; (method, length) per plane."""
    from codec.entropy import huffman

    s = c.itemsize
    n = b.size // s
    u = b[:n * s].view(f"<u{s}").astype(np.uint64)
    bits = 8 * s
    if c.rotate:
        u = ((u << np.uint64(c.rotate)) | (u >> np.uint64(bits - c.rotate))) & np.uint64((1 << bits) - 1)
    want = []
    for p in range(s):
        plane = ((u >> np.uint64(8 * p)) & np.uint64(255)).astype(np.uint8)
        counts = np.bincount(plane, minlength=256)
        m, ln = 0, n
        h = huffman.block_lengths(counts, c.segments)[0]
        if h < ln:
            m, ln = 1, h
        h7 = huffman.block_lengths(np.bincount(plane & 127, minlength=256), c.segments)[0] + (n + 7) // 8
        if h7 <= ln:
            m, ln = 3, h7
        if m and 20 * ln > 19 * n:     # a Huffman plane must save 5 %
            m, ln = 0, n
        used = np.flatnonzero(counts)
        varying = int(np.bitwise_or.reduce(used) ^ np.bitwise_and.reduce(used))
        nbits = 2 + bin(varying).count("1") * ((n + 7) // 8)
        if nbits <= ln:
            m, ln = 4, nbits
        want.append((m, ln))
    return want


@pytest.mark.parametrize("dtype, n", [("F16", 40001), ("BF16", 40001), ("U16", 20000), ("F16", 16384),
                                      ("F16", 16383), ("F32", 30001), ("F16", 777)])
def test_compiled_encoder_matches_numpy_choice(dtype, n):
    # the compiled planner (for 2-byte elements from 16384 values on: one 64K-entry histogram of
    # whole values) picks what plane-by-plane numpy counting picks, from an odd address and with
    # a tail; the numpy reference decoder reads the result
    raw = np.concatenate([np.zeros(1, np.uint8), sample(dtype, n, 9).view(np.uint8), np.arange(3, dtype=np.uint8)])
    b = raw[1:]
    c = ByteGroup(zstd="never").fit(ArraySource(b), dtype)
    e = bytes(c.encode_buffer(b))
    s = c.itemsize
    got = [(e[5 * p], int(np.frombuffer(e[5 * p + 1:5 * p + 5], "<u4")[0])) for p in range(s)]
    assert got == _expected_planes(b, c)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)
    # and the planner's byte counts are the planes' histograms
    from codec.transforms import bytegroup as bg

    n = b.size // s
    planes, hist, counts, sizes, lengths, low7, methods, lens = bg._SCRATCH.get(s, n)
    bg._plan(b, b[:2 * n].view("<u2") if s == 2 else bg._NO_U16, s, c.rotate, planes, hist, counts, sizes,
             lengths, low7, methods, lens, c.segments)
    assert [list(m) for m in (methods, lens)] == [[m for m, _ in got], [ln for _, ln in got]]
    for p in range(s):
        assert np.array_equal(counts[p], np.bincount(planes[p], minlength=256))


def test_encoders_in_threads_match_serial():
    # each thread encodes with its own scratch arrays
    from codec.formats.frame import for_each

    chunks = [sample(dt, n, seed).view(np.uint8) for seed, (dt, n) in
              enumerate([("F16", 70000), ("F32", 30000), ("F16", 500), ("BF16", 65536)] * 4)]
    codecs = [ByteGroup().fit(ArraySource(b), dt) for b, dt in
              zip(chunks, ["F16", "F32", "F16", "BF16"] * 4)]
    serial = [bytes(c.encode_buffer(b)) for c, b in zip(codecs, chunks)]
    for workers in (2, 4):
        par = [None] * len(chunks)

        def enc(i):
            par[i] = bytes(codecs[i].encode_buffer(chunks[i]))
        for_each(enc, list(range(len(chunks))), workers)
        assert par == serial


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4099])
def test_split_top_bits_is_packbits(n):
    from codec.transforms.bytegroup import _split_top_bits

    plane = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    out = np.full((n + 7) // 8 + 2, 0xAA, np.uint8)
    row = plane.copy()
    _split_top_bits(row, out, 1)
    assert bytes(out[1:1 + (n + 7) // 8]) == np.packbits(plane >> 7).tobytes()
    assert out[0] == 0xAA and out[-1] == 0xAA
    assert np.array_equal(row, plane & 127)


def _wide_sample(n, seed, sign):
    # 2-byte values whose high byte has a long-tailed distribution (codes past the 12-bit lookup),
    # a random low byte (a raw plane), and a random or clear top bit (method 3 or method 1)
    rng = np.random.default_rng(seed)
    hi = np.minimum(rng.geometric(0.08, n) - 1, 127).astype(np.uint16)
    hi[rng.random(n) < 0.001] = rng.integers(0, 128, 1)[0]
    if sign:
        hi |= (rng.random(n) < 0.5).astype(np.uint16) << 7
    return (hi << 8) | rng.integers(0, 256, n).astype(np.uint16)


@pytest.mark.parametrize("segments", [6, 4])
@pytest.mark.parametrize("dtype, sign, method", [("F16", True, 3), ("F16", False, 1), ("BF16", True, None)])
def test_wide_decode_path(dtype, sign, method, segments):
    # chunks of >= 2^17 2-byte values with a raw low plane and a coded high one decode the high
    # plane straight into the output words; same bytes as the plane-by-plane path and the numpy
    # reference decoder, with a tail and at an odd address
    from codec.entropy.huffman import WIDE_BLOCK_MIN
    from codec.transforms.bytegroup import chunk_decoder

    n = WIDE_BLOCK_MIN + 5
    v = _wide_sample(n, 3, sign)
    raw = np.concatenate([np.zeros(1, np.uint8), v.view(np.uint8), np.array([9], np.uint8)])
    b = raw[1:]
    c = ByteGroup(segments=segments).fit(ArraySource(b), dtype)
    assert c.segments == segments
    e = bytes(c.encode_buffer(b))
    m = _methods(e, 2)
    if method is not None:
        assert m == [0, method]
    assert m[0] == 0 and m[1] in (1, 3)
    out_raw = np.empty(b.size + 1, np.uint8)
    out = out_raw[1:]
    c.decode(e, out)
    assert np.array_equal(out, b)
    slow = np.empty_like(b)
    c._decode_py(np.frombuffer(e, np.uint8), np.empty((2, n), np.uint8), slow, "x")
    assert np.array_equal(slow, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)
    # the wide path leaves the plane buffers alone (the plane path decodes into them)
    planes = np.full((2, n), 0xA5, np.uint8)
    out[:] = 0
    assert chunk_decoder(c.segments, 2, n)(np.frombuffer(e, np.uint8), 2, c.rotate, planes, out) == 0
    assert np.array_equal(out, b) and (planes == 0xA5).all()


def test_wide_decode_has_long_codes():
    # the sample above really exercises codes longer than the 12-bit lookup (the slow steps)
    from codec.entropy import huffman

    v = _wide_sample(1 << 17, 3, False)
    counts = np.bincount((v >> 8).astype(np.uint8), minlength=256)
    assert huffman.block_lengths(counts)[1].max() > 12


def _damaged(e, rng, trials, every):
    """`trials` damaged copies of payload e: every `every`-th one truncated, the others with 1-3
    flipped bits."""
    for trial in range(trials):
        bad = bytearray(e)
        if trial % every == 0:
            bad = bad[:int(rng.integers(0, len(bad)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(0, len(bad)))
                bad[i] ^= 1 << int(rng.integers(0, 8))
        yield bytes(bad)


@pytest.mark.parametrize("seed", range(4))
def test_wide_decode_corruption(seed):
    from codec.entropy.huffman import WIDE_BLOCK_MIN

    n = WIDE_BLOCK_MIN
    b = _wide_sample(n, seed, seed % 2 == 0).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = bytes(c.encode_buffer(b))
    out = np.empty_like(b)
    for bad in _damaged(e, np.random.default_rng(seed), 30, 5):
        try:
            c.decode(bad, out)      # a flip in raw or coded bits may decode (the frame's
        except FormatError:         # checksum catches it); nothing else may happen
            pass


def _wide_block_fields(e, n):
    """Offsets in a wide-path F16 payload (plane 0 raw, plane 1 method 3): the Huffman block's
    bit count, code table and segment table."""
    blk = 10 + n + (n + 7) // 8
    k = int(np.unpackbits(np.frombuffer(e[blk + 4:blk + 36], np.uint8)).sum())
    return blk, blk + 36, blk + 36 + (k + 1) // 2


def test_wide_decode_rejects_bad_block_headers():
    # the wide path parses its block header itself: each damage is a FormatError naming plane 1
    from codec.entropy.huffman import WIDE_BLOCK_MIN

    n = WIDE_BLOCK_MIN
    b = _wide_sample(n, 5, True).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = bytes(c.encode_buffer(b))
    assert _methods(e, 2) == [0, 3]
    blk, table, segs = _wide_block_fields(e, n)
    out = np.empty_like(b)
    bad_cases = []
    x = bytearray(e)
    x[blk:blk + 4] = (int.from_bytes(e[blk:blk + 4], "little") + 64).to_bytes(4, "little")   # bit count
    bad_cases.append(x)
    x = bytearray(e)
    x[table] &= 0x0F                   # the first used symbol's length nibble -> 0
    bad_cases.append(x)
    x = bytearray(e)
    x[table] |= 0x10 if x[table] >> 4 != 1 else 0x20   # another length: not the stream's code
    bad_cases.append(x)
    x = bytearray(e)
    x[segs:segs + 4] = (0xFFFFFFF0).to_bytes(4, "little")   # a segment start past the bits
    bad_cases.append(x)
    for bad in bad_cases:
        with pytest.raises(FormatError, match="plane 1"):
            c.decode(bytes(bad), out)


def test_wide_decode_agrees_with_plane_path_on_bitstream_flips():
    # a flipped bit in the coded stream: the wide path raises exactly when the plane-by-plane
    # path does, and otherwise decodes the same bytes. Huffman codes resynchronise, so many
    # flips end at the right bit and decode to wrong values: the frame's checksum catches those.
    from codec.entropy.huffman import WIDE_BLOCK_MIN

    n = WIDE_BLOCK_MIN
    b = _wide_sample(n, 6, True).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = bytes(c.encode_buffer(b))
    _, _, segs = _wide_block_fields(e, n)
    rng = np.random.default_rng(6)
    out, slow = np.empty_like(b), np.empty_like(b)
    caught = 0
    for _ in range(40):
        bad = bytearray(e)
        i = int(rng.integers(segs + 4 * (c.segments - 1), len(bad)))
        bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            c.decode(bytes(bad), out)
            wide_ok = True
        except FormatError as exc:
            assert "plane 1" in str(exc)
            wide_ok = False
        try:
            c._decode_py(np.frombuffer(bytes(bad), np.uint8), np.empty((2, n), np.uint8), slow, "x")
            slow_ok = True
        except FormatError:
            slow_ok = False
        assert wide_ok == slow_ok
        if wide_ok:
            assert np.array_equal(out, slow) and not np.array_equal(out, b)
        caught += not wide_ok
    assert caught > 0


@pytest.mark.parametrize("dtype, n", [("F16", 1 << 17), ("F32", 5000), ("I32", 3000)])
def test_decode_into_strided_output(dtype, n):
    # the kernels store whole words; a strided output gets the same bytes through a copy
    b = sample(dtype, n, 2).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), dtype)
    e = c.encode(b)
    big = np.zeros(2 * b.size, np.uint8)
    c.decode(e, big[::2])
    assert np.array_equal(big[::2], b) and not big[1::2].any()


@pytest.mark.parametrize("n", [0, 1, 1000, 1 << 14, (1 << 14) + 77, 100003])     # _NT_MIN = 1 << 14
@pytest.mark.parametrize("rot", [0, 1, 7, 31])
def test_merge4_matches_numpy_at_any_alignment(n, rot):
    # large merges take the non-temporal vector path between a scalar head and tail: every output
    # offset (relative to a cache line) must give the same bytes and touch nothing outside
    from codec.transforms.bytegroup import _merge4

    rng = np.random.default_rng(n + rot)
    planes = [rng.integers(0, 256, n, dtype=np.uint8) for _ in range(4)]
    w = sum(p.astype(np.uint32) << np.uint32(8 * k) for k, p in enumerate(planes)).astype(np.uint32)
    if rot:
        w = (w >> np.uint32(rot)) | (w << np.uint32(32 - rot))
    for off in (0, 1, 4, 20, 60):
        buf = np.full(4 * n + 128, 0xA5, np.uint8)
        start = off + (-buf.ctypes.data) % 64      # off bytes past a 64-byte boundary
        _merge4(*planes, rot, buf[start:start + 4 * n])
        assert np.array_equal(buf[start:start + 4 * n], w.view(np.uint8))
        assert (buf[:start] == 0xA5).all() and (buf[start + 4 * n:] == 0xA5).all()


def test_f32_chunk_decodes_into_any_alignment():
    b = sample("F32", 1 << 16, 4).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F32")
    e = c.encode(b)
    for off in (0, 3, 4, 36):
        buf = np.zeros(b.size + 128, np.uint8)
        start = off + (-buf.ctypes.data) % 64
        c.decode(e, buf[start:start + b.size])
        assert np.array_equal(buf[start:start + b.size], b)
        assert not buf[:start].any() and not buf[start + b.size:].any()


@pytest.mark.parametrize("dtype", ["F64", "I64"])
def test_8_byte_chunks_encode_and_decode_at_any_alignment(dtype):
    # 8-byte elements split and merge through 8 rows of whole words: from and into odd addresses,
    # and at a rotation other than the defaults
    v = sample(dtype, 5001, 6).view(np.uint8)
    for rotate in (None, 5):
        c = ByteGroup().fit(ArraySource(v), dtype)
        if rotate is not None:
            c.rotate = rotate
        for off in (0, 1, 3, 8):
            src = np.zeros(v.size + 16, np.uint8)
            src[off:off + v.size] = v
            e = c.encode(src[off:off + v.size])
            assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), v.size), v)
            buf = np.zeros(v.size + 64, np.uint8)
            start = off + (-buf.ctypes.data) % 32
            c.decode(e, buf[start:start + v.size])
            assert np.array_equal(buf[start:start + v.size], v)
            assert not buf[:start].any() and not buf[start + v.size:].any()


def test_huge_chunks_do_not_stay_in_the_thread_scratch():
    from codec.transforms import bytegroup as bg

    b = sample("F16", (bg._SCRATCH_MAX // 2) + 1000, 3).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    e = bytes(c.encode_buffer(b))
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert bg._SCRATCH.flat.size <= bg._SCRATCH_MAX


def test_segments_config():
    # new files: 6 segments per Huffman block, named in the config; 4 is the 1.0 layout, whose
    # configs do not name it; a stored config without the key decodes as 4, while a user's spec
    # without it fits to the writer's default
    from codec.registry import get_codec

    b = sample("F16", 5000, 1).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F16")
    assert c.segments == 6 and c.get_config()["segments"] == 6
    legacy = ByteGroup(segments=4).fit(ArraySource(b), "F16")
    assert "segments" not in legacy.get_config()
    assert ByteGroup.from_config(legacy.get_config()).segments == 4
    assert get_codec("bytegroup").fit(ArraySource(b), "F16").segments == 6
    assert get_codec({"id": "bytegroup", "segments": 4}).fit(ArraySource(b), "F16").segments == 4
    for bad in (0, 9, True, 6.0, "6", None):
        with pytest.raises((FormatError, ValueError)):
            get_codec({**c.get_config(), "segments": bad})
    # a layout read with the other count fails cleanly
    e = c.encode(b)
    with pytest.raises(FormatError):
        get_codec({**c.get_config(), "segments": 4}).decode(e, np.empty_like(b))


@pytest.mark.parametrize("segments", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype, n", [("F16", (1 << 17) + 3), ("F32", 40001), ("F16", 5000)])
def test_every_segment_count_round_trips(dtype, n, segments):
    # 4 and 6 take the packed kernels (F16's big chunks the wide one), other counts the generic
    # kernel; the numpy reference decoder agrees
    b = sample(dtype, n, segments).view(np.uint8)
    c = ByteGroup(zstd="never", segments=segments).fit(ArraySource(b), dtype)
    e = c.encode(b)
    assert any(m in (1, 3) for m in _methods(e, c.itemsize))
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)


@pytest.mark.parametrize("segments", [3, 6])
def test_corrupt_blocks_of_other_segment_counts(segments):
    # the generic kernel (counts other than 4 and 6) and the 6-reader one on damaged payloads:
    # a FormatError or some output (the frame checksum catches a wrong one), never anything else
    b = sample("F32", 40000, 4).view(np.uint8)
    c = ByteGroup(zstd="never", segments=segments).fit(ArraySource(b), "F32")
    e = c.encode(b)
    out = np.empty_like(b)
    raised = 0
    for bad in _damaged(e, np.random.default_rng(segments), 40, 4):
        try:
            c.decode(bad, out)
        except FormatError:
            raised += 1
    assert raised >= 10      # every truncation at least



@pytest.mark.parametrize("dtype", ["F16", "F32"])
def test_drifting_chunk_decodes(dtype):
    # a chunk whose first values are near-constant and whose spread then grows: its Huffman
    # segments end far apart, so the packed kernels regroup the unfinished ones (16-bit lanes on
    # the F16 wide path, byte lanes on F32's planes); same bytes as the numpy reference
    rng = np.random.default_rng(5)
    n = (1 << 18) if dtype == "F16" else (1 << 16)
    scale = np.repeat(np.array([1e-4, 1e-3, 3e-3, 1e-2, 0.1, 1.0]), -(-n // 6))[:n]
    v = (rng.normal(0, 1, n) * scale).astype(np.float16 if dtype == "F16" else np.float32)
    v[:n // 6] = v[0]
    b = v.view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), dtype)
    e = bytes(c.encode_buffer(b))
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)
    # flipped bits in the coded planes, where the regrouped rounds run: a codec error or some
    # output, and never a byte written outside the output
    s = c.itemsize
    lens = [int.from_bytes(e[5 * p + 1:5 * p + 5], "little") for p in range(s)]
    coded = [(5 * s + sum(lens[:p]), lens[p]) for p in range(s) if e[5 * p] in (1, 3)]
    assert coded
    guarded = np.full(b.size + 128, 0xA5, np.uint8)
    for trial in range(40):
        off, ln = coded[trial % len(coded)]
        bad = bytearray(e)
        for _ in range(int(rng.integers(1, 4))):
            bad[off + int(rng.integers(0, ln))] ^= 1 << int(rng.integers(0, 8))
        try:
            c.decode(bytes(bad), guarded[64:64 + b.size])
        except FormatError:
            pass
        assert (guarded[:64] == 0xA5).all() and (guarded[64 + b.size:] == 0xA5).all()


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
@pytest.mark.parametrize("rot", [0, 1, 3])
def test_split_matches_numpy(itemsize, rot):
    # the encoder's plane split (its vectorized paths for rotations 0 and 1, the scalar one for
    # others) against numpy: plane b holds byte b of each element rotated left by rot bits
    from codec.transforms.bytegroup import _split

    rng = np.random.default_rng(itemsize * 10 + rot)
    n = 1001
    src = rng.integers(0, 256, itemsize * n + 3).astype(np.uint8)
    planes = np.empty((itemsize, n), np.uint8)
    _split(src, itemsize, rot, planes)
    bits = 8 * itemsize
    u = np.zeros(n, np.uint64)
    for b in range(itemsize):
        u |= src[b:itemsize * n:itemsize].astype(np.uint64) << np.uint64(8 * b)
    if rot:
        mask = np.uint64(2 ** bits - 1)
        u = ((u << np.uint64(rot)) | (u >> np.uint64(bits - rot))) & mask
    want = np.stack([((u >> np.uint64(8 * b)) & np.uint64(255)).astype(np.uint8) for b in range(itemsize)])
    assert np.array_equal(planes, want)


@pytest.mark.parametrize("rot", range(8))
def test_one_byte_planes_merge_at_any_rotation(rot):
    # 1-byte elements: the decoder's merge copies the plane when there is no rotation and rotates
    # each byte right otherwise (the encoder rotated it left)
    from codec.transforms.bytegroup import _merge

    rng = np.random.default_rng(rot)
    plane = rng.integers(0, 256, (1, 777)).astype(np.uint8)
    out = np.empty(777, np.uint8)
    _merge(plane, 1, rot, out)
    v = plane[0].astype(np.uint16)
    want = ((v >> rot) | (v << (8 - rot))) & 255 if rot else v
    assert np.array_equal(out, want.astype(np.uint8))


def _bits_values(itemsize, n, masks, seed=0):
    """n elements of itemsize bytes whose (unrotated) byte p varies only in the bits of masks[p],
    its other bits fixed at a pattern."""
    rng = np.random.default_rng(seed)
    planes = [(rng.integers(0, 256, n).astype(np.uint8) & m) | np.uint8(0xA5 & ~m & 0xFF) for m in masks]
    return np.stack(planes, axis=1).reshape(-1)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 16389])
@pytest.mark.parametrize("itemsize, dtype", [(1, "U8"), (2, "U16"), (4, "I32"), (8, "F64")])
@pytest.mark.parametrize("zstd", ["never", "always"])
def test_bits_planes_round_trip(n, itemsize, dtype, zstd):
    # planes with 0 to 8 varying bits: all but the 8-bit one take method 4, unpacked one map at a
    # time (up to 4 bits) or in one pass over 8 maps (5 and more); the F16/F32 path decodes in one
    # compiled call, with zstd planes present through _decode_py
    masks = [0x01, 0xEF, 0x00, 0x3E, 0xFF, 0x81, 0x70, 0x02][:itemsize]
    b = _bits_values(itemsize, n, masks, seed=n)
    c = ByteGroup(rotate=0, zstd=zstd).fit(ArraySource(b), dtype)
    c.rotate = 0
    e = c.encode(b)
    out = np.full_like(b, 0x5C)
    c.decode(e, out)
    assert np.array_equal(out, b)
    assert np.array_equal(ref.bytegroup_decode(e, c.get_config(), b.size), b)
    slow = np.full_like(b, 0x5C)
    c._decode_py(np.frombuffer(e, np.uint8), np.empty((itemsize, n), np.uint8), slow, "x")
    assert np.array_equal(slow, b)
    if n >= 1000 and zstd == "never":
        got = _methods(e, itemsize)
        for p, m in enumerate(masks):
            assert got[p] == (0 if m == 0xFF else 4), (p, got)
        if itemsize >= 4:   # a constant plane is its 2 bytes
            assert int(np.frombuffer(e[5 * 2 + 1:5 * 2 + 5], "<u4")[0]) == 2


def test_huffman_planes_must_save_five_percent():
    # near-random planes that Huffman would shrink by 1-4 % stay raw (ZipNN's 0.95 threshold): a
    # Huffman pass costs far more than the bytes it saves
    rng = np.random.default_rng(5)
    n = 1 << 16
    for p_zero, want in ((0.03, 0), (0.35, 1)):
        plane = rng.integers(0, 256, n).astype(np.uint8)
        plane[rng.random(n) < p_zero] = 0
        c = ByteGroup(zstd="never").fit(ArraySource(plane), "U8")
        e = c.encode(plane)
        assert _methods(e, 1) == [want]
        out = np.empty_like(plane)
        c.decode(e, out)
        assert np.array_equal(out, plane)


def test_bits_plane_sizes_and_f32_from_bf16():
    # F32 upcast from BF16: plane 0 is the sign over zeros (1 bit a value, where a Huffman code
    # cannot go below 1 bit), plane 1 is all zeros (2 bytes)
    x = (np.random.default_rng(3).standard_normal(65536) * 0.03).astype(np.float32)
    u = (x.view(np.uint32) + 0x8000) & 0xFFFF0000
    b = u.astype(np.uint32).view(np.uint8)
    c = ByteGroup().fit(ArraySource(b), "F32")
    e = c.encode(b)
    lens = [int(np.frombuffer(e[5 * p + 1:5 * p + 5], "<u4")[0]) for p in range(4)]
    assert _methods(e, 4)[:2] == [4, 4]
    assert lens[:2] == [2 + 65536 // 8, 2]
    assert len(e) < 0.34 * b.size
    out = np.empty_like(b)
    c.decode(e, out)
    assert np.array_equal(out, b)


def _bits_payload(n=1003, mask=0x0C):
    b = _bits_values(2, n, [mask, 0xFF])
    c = ByteGroup(rotate=0, zstd="never").fit(ArraySource(b), "U16")
    c.rotate = 0
    e = bytearray(c.encode(b))
    assert _methods(e, 2) == [4, 0]
    return c, b, e


def _decode_all_ways(c, payload, n_bytes):
    """The error of each decoder (compiled, _decode_py, reference) on payload, or None."""
    errs = []
    for fn in (lambda out: c.decode(bytes(payload), out),
               lambda out: c._decode_py(np.frombuffer(bytes(payload), np.uint8),
                                        np.empty((2, n_bytes // 2), np.uint8), out, "x"),
               lambda out: ref.bytegroup_decode(bytes(payload), c.get_config(), n_bytes)):
        try:
            fn(np.empty(n_bytes, np.uint8))
            errs.append(None)
        except FormatError as exc:
            errs.append(str(exc))
    return errs


@pytest.mark.parametrize("mask", [0x0C, 0xEE])     # unpacked map by map / in one pass
def test_bits_plane_corruption_is_rejected(mask):
    c, b, e = _bits_payload(mask=mask)
    n = b.size // 2
    nb8 = (n + 7) // 8
    assert e[10] == mask and e[11] == 0xA5 & ~mask     # the varying bits, the base
    cases = {}
    bad = bytearray(e)
    bad[11] |= 0x04                                 # the base has a varying bit set
    cases["base"] = bad
    bad = bytearray(e)
    bad[10] = mask | 0x10                           # one more varying bit than the maps hold
    bad[11] &= ~0x10
    cases["mask"] = bad
    bad = bytearray(e)
    bad[10 + 2 + nb8 - 1] |= 0x01                   # a bit past the plane's end (n % 8 == 3)
    cases["padding"] = bad
    bad = bytearray(e)
    bad[1:5] = np.uint32(1).tobytes()              # shorter than mask and base
    cases["short"] = bad
    for what, payload in cases.items():
        errs = _decode_all_ways(c, payload, b.size)
        assert all(errs), (what, errs)
    assert "bits plane" in _decode_all_ways(c, cases["padding"], b.size)[0]
    # flips inside a map are raw bits (the frame's checksum catches them): exactly one value moves
    off = 10 + 2
    for i in (0, 5, nb8 - 2):
        flip = bytearray(e)
        flip[off + i] ^= 0x10
        out = np.empty_like(b)
        c.decode(bytes(flip), out)
        assert list(np.flatnonzero(out != b)) == [2 * (8 * i + 3)]
        assert out[2 * (8 * i + 3)] ^ b[2 * (8 * i + 3)] == mask & -mask     # its lowest varying bit


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_bits_plane_random_corruption_never_crashes(seed):
    # random byte edits of a payload with a bits plane: a FormatError or a decode, never a crash,
    # and nothing written past the output
    c, b, e = _bits_payload(517, mask=(0x0C, 0xEE)[seed % 2])
    rng = np.random.default_rng(seed)
    bad = bytearray(e)
    for _ in range(int(rng.integers(1, 4))):
        bad[int(rng.integers(0, len(bad)))] = int(rng.integers(0, 256))
    guard = np.full(b.size + 64, 0xEE, np.uint8)
    try:
        c.decode(bytes(bad), guard[32:32 + b.size])
    except FormatError:
        pass
    assert (guard[:32] == 0xEE).all() and (guard[32 + b.size:] == 0xEE).all()
