"""`exponent` codec (DFloat11 layout): round trips, config, corruption, reference, GPU sync index."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec import _reference as ref
from codec.entropy.exponent import (DEFAULT_SEGMENTS, Exponent, build_gpu_sync, parse_gpu_sync, GPU_SYNC_SECTION,
                                    stream_sizes)
from codec.errors import FormatError
from codec.registry import get_codec
from codec.source import ArraySource


def bf16_of(x):
    """Round-to-nearest-even float32 -> BF16 bits (uint16)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    r[nan] = (u[nan] >> 16).astype(np.uint16) | 0x40
    return r


SPECIALS = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F,
                     0x0080, 0x7F7F, 0xFF7F], np.uint16)


def weights(n, seed=0):
    rng = np.random.default_rng(seed)
    v = bf16_of(rng.normal(0, 0.02, n).astype(np.float32))
    v[: min(n, SPECIALS.size)] = SPECIALS[: min(n, SPECIALS.size)]
    return v


def roundtrip(values, codec=None, chunk=4096):
    b = values.view(np.uint8)
    c = (codec or Exponent()).fit(ArraySource(b), "BF16")
    c2 = get_codec(json.loads(json.dumps(c.get_config())))
    encs = []
    for off in range(0, b.size, chunk):
        ch = b[off:off + chunk]
        e = c.encode(ch)
        out = np.empty_like(ch)
        c2.decode(e, out)
        assert np.array_equal(out, ch)
        encs.append(e)
    return c, encs


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_roundtrip_all_k(k):
    v = weights(10001, k)
    # chunks of 2048 values take the small-table path, of 10001 the packed kernel: same bytes
    roundtrip(v, Exponent(mantissa_bits=k), chunk=2 * v.size)
    c, encs = roundtrip(v, Exponent(mantissa_bits=k))
    assert c.mantissa_bits == k
    # reference decoder agrees
    cfg = c.get_config()
    for i, e in enumerate(encs[:2]):
        n = min(4096, v.size * 2 - 4096 * i)
        assert np.array_equal(ref.exponent_decode(e, cfg, n), v.view(np.uint8)[4096 * i:4096 * i + n])


def test_specials_and_all_exponents():
    v = np.arange(65536, dtype=np.uint16)  # every BF16 bit pattern: NaN payloads, +-0, +-inf, subnormals
    np.random.default_rng(1).shuffle(v)
    roundtrip(v, Exponent(mantissa_bits=1))
    roundtrip(v, Exponent(mantissa_bits=0))


def test_empty_single_and_constant():
    for v in (np.zeros(0, np.uint16), np.array([0x3F80], np.uint16), np.full(777, 0xBF80, np.uint16)):
        roundtrip(v)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=0, max_size=300), st.integers(0, 3))
def test_property(values, k):
    v = np.array(values, np.uint16)
    c, encs = roundtrip(v, Exponent(mantissa_bits=k), chunk=2 * 64)
    cfg = c.get_config()
    for i, e in enumerate(encs):
        seg = v.view(np.uint8)[128 * i:128 * (i + 1)]
        assert np.array_equal(ref.exponent_decode(e, cfg, seg.size), seg)


def test_deterministic_and_auto_choice():
    v = weights(50000, 3)
    c1, e1 = roundtrip(v, chunk=1 << 16)
    c2, e2 = roundtrip(v.copy(), chunk=1 << 16)
    assert c1.get_config() == c2.get_config() and e1 == e2
    assert c1.mantissa_bits in (0, 1)


def test_config_validation():
    c = Exponent(mantissa_bits=0).fit(ArraySource(weights(1000).view(np.uint8)), "BF16")
    cfg = c.get_config()
    bad = dict(cfg, code_lengths=[[1, 1], [2, 1], [3, 1]])
    with pytest.raises(FormatError):
        get_codec(bad)
    with pytest.raises(FormatError):
        get_codec(dict(cfg, code_lengths=[[300, 1]]))
    with pytest.raises(FormatError):
        get_codec(dict(cfg, surprise=1))
    with pytest.raises(ValueError):
        Exponent().fit(ArraySource(np.zeros(4, np.uint8)), "F16")


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["flip", "truncate", "header"]))
def test_corruption(seed, how):
    rng = np.random.default_rng(seed)
    v = weights(3000 if seed % 2 else 9000, seed % 7)   # the small-table path and the packed kernel
    c = Exponent(mantissa_bits=int(seed % 3)).fit(ArraySource(v.view(np.uint8)), "BF16")
    e = bytearray(c.encode(v.view(np.uint8)))
    if how == "flip":
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(0, len(e)))
            e[i] ^= 1 << int(rng.integers(0, 8))
    elif how == "truncate":
        e = e[: int(rng.integers(0, len(e)))]
    else:
        e[int(rng.integers(0, 8))] ^= 1 << int(rng.integers(0, 8))
    out = np.empty(v.size * 2, np.uint8)
    try:
        c.decode(bytes(e), out)
    except FormatError:
        return
    # an undetected flip in the raw mantissa stream decodes to other bytes of the right size
    assert out.size == v.size * 2


def test_real_weights_bf16():
    from benches_data import minilm_bf16_tensors

    tensors = minilm_bf16_tensors(3)
    if not tensors:
        pytest.skip("MiniLM package not installed")
    for v in tensors:
        c, encs = roundtrip(v, chunk=1 << 17)
        assert sum(map(len, encs)) < 0.68 * v.nbytes


def test_gpu_sync_index_matches_reference():
    v = weights(40000, 5)
    c = Exponent(mantissa_bits=1, gpu_sync=True, threads_per_block=32).fit(ArraySource(v.view(np.uint8)), "BF16")
    chunk = 1 << 14
    encs = [c.encode(v.view(np.uint8)[o:o + chunk]) for o in range(0, v.nbytes, chunk)]
    sec = c.extra_sections(encs)[GPU_SYNC_SECTION]
    p = parse_gpu_sync(sec)
    refs = ref.gpu_sync_reference(encs, c.get_config(), bpt=8, tpb=32)
    assert p["chunks"].size == len(encs)
    for ci, (gaps, outs) in enumerate(refs):
        row = p["chunks"][ci]
        blk = p["blocks"][row["first_block"]:row["first_block"] + row["n_blocks"]]
        assert np.array_equal(blk["out_start"], outs)
        assert np.array_equal(p["gaps"][row["first_block"]:row["first_block"] + row["n_blocks"]].reshape(-1), gaps)
        assert row["first_value"] == ci * chunk // 2
    assert Exponent(mantissa_bits=0).extra_sections(encs) == {}
    with pytest.raises(FormatError):
        parse_gpu_sync(sec[:-1])


# --- segment table (interleaved segments of the exponent stream: 6 by default, 4 in 1.0 files) --
def _trailer(e, nseg=6):
    return np.frombuffer(bytes(e[len(e) - 4 * (nseg - 1):]), "<u4").astype(np.int64)


SEGMENT_CASES = [(n, 6) for n in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 33, 1000, 4097, 70_001)] \
    + [(n, 4) for n in (0, 3, 5, 33, 4097, 70_001)] + [(n, s) for n in (2, 4097, 70_001) for s in (1, 3, 8)]


@pytest.mark.parametrize("n, nseg", SEGMENT_CASES)
def test_segment_table_matches_code_starts(n, nseg):
    v = weights(n, n)
    c = Exponent(mantissa_bits=n % 2, segments=nseg).fit(ArraySource(v.view(np.uint8)), "BF16")
    assert c.segments == nseg
    e = c.encode(v.view(np.uint8))
    nbits = int(np.frombuffer(e[4:8], "<u4")[0])
    starts = np.concatenate([[0], np.cumsum(c.lengths.astype(np.int64)[(v.astype(np.int64) >> (7 - c.mantissa_bits))
                                                                        & ((1 << (8 + c.mantissa_bits)) - 1)])])
    assert list(_trailer(e, nseg)) == [int(starts[(j * n) // nseg]) for j in range(1, nseg)]
    assert starts[-1] == nbits
    out = np.empty(2 * n, np.uint8)
    c.decode(e, out)
    assert np.array_equal(out, v.view(np.uint8))
    assert np.array_equal(ref.exponent_decode(e, c.get_config(), 2 * n), v.view(np.uint8))


@pytest.mark.parametrize("nseg", [4, 6, 5])
@pytest.mark.parametrize("change", ["dec", "inc", "swap", "past", "huge", "zero"])
def test_segment_table_corruption_rejected(change, nseg):
    v = weights(70_000, 3)      # past SMALL_CHUNK: the packed kernels
    c = Exponent(mantissa_bits=1, segments=nseg).fit(ArraySource(v.view(np.uint8)), "BF16")
    e = bytearray(c.encode(v.view(np.uint8)))
    t = _trailer(e, nseg)
    nbits = int(np.frombuffer(bytes(e[4:8]), "<u4")[0])
    if change == "dec":
        t[1] -= 1
    elif change == "inc":
        t[0] += 1
    elif change == "swap":
        t[0], t[2] = t[2], t[0]
    elif change == "past":
        t[2] = nbits + 1
    elif change == "huge":
        t[1] = 2**32 - 1
    else:
        t[:] = 0
    e[len(e) - 4 * (nseg - 1):] = t.astype("<u4").tobytes()
    out = np.empty(v.size * 2, np.uint8)
    with pytest.raises(FormatError):
        c.decode(bytes(e), out)
    with pytest.raises(FormatError):
        ref.exponent_decode(bytes(e), c.get_config(), v.size * 2)


@pytest.mark.parametrize("nseg", [4, 6])
def test_payload_size_includes_segment_table(nseg):
    v = weights(999, 1)
    c = Exponent(mantissa_bits=0, segments=nseg).fit(ArraySource(v.view(np.uint8)), "BF16")
    e = c.encode(v.view(np.uint8))
    n, nbits = np.frombuffer(e[:8], "<u4")
    assert len(e) == 8 + (8 * ((int(nbits) + 63) // 64) + 8) + int(n) + 4 * (nseg - 1)
    out = np.empty(v.size * 2, np.uint8)
    for bad in (e[:-1], e + b"\0"):
        with pytest.raises(FormatError):
            c.decode(bad, out)
    # the other layout's codec reads the same bytes as a wrong size
    other = Exponent.from_config({**c.get_config(), "segments": 10 - nseg})
    with pytest.raises(FormatError, match="segments"):
        other.decode(e, out)
    assert isinstance(e, bytes) and bytes(c.encode_buffer(v.view(np.uint8))) == e


def test_segments_config():
    v = weights(5000, 1)
    c = Exponent().fit(ArraySource(v.view(np.uint8)), "BF16")
    assert c.segments == DEFAULT_SEGMENTS == 6 and c.get_config()["segments"] == 6
    # 4 is the 1.0 layout: its config does not name it, and a stored config without the key
    # (it holds a code table) reads as 4, while a user's spec without a table gets the default
    legacy = Exponent(segments=4).fit(ArraySource(v.view(np.uint8)), "BF16")
    assert "segments" not in legacy.get_config()
    assert Exponent.from_config(legacy.get_config()).segments == 4
    # a user's spec without the key: the writer's default once fitted
    assert Exponent.from_config({"id": "exponent"}).fit(ArraySource(v.view(np.uint8)), "BF16").segments == 6
    assert get_codec("exponent").fit(ArraySource(v.view(np.uint8)), "BF16").segments == 6
    assert Exponent.from_config({"id": "exponent", "segments": 4}).segments == 4
    for bad in (0, 9, True, 4.0, "6", None):
        with pytest.raises((FormatError, ValueError)):
            Exponent.from_config({**c.get_config(), "segments": bad})


@pytest.mark.parametrize("nseg", [4, 6])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_long_codes_and_corruption_in_fast_rounds(k, nseg):
    # rare exponents get codes longer than the 12-bit lookup, scattered through a chunk big enough
    # for the interleaved rounds: the packed kernel's canonical steps, tails and merge all run
    rng = np.random.default_rng(k)
    n = 60_000
    v = weights(n, k)
    rare = rng.integers(0, n, 400)
    v[rare] = (rng.integers(0, 1 << 16, rare.size)).astype(np.uint16)
    c = Exponent(mantissa_bits=k, segments=nseg).fit(ArraySource(v.view(np.uint8)), "BF16")
    assert c.lengths.max() > 12
    e = c.encode(v.view(np.uint8))
    out = np.empty(2 * n, np.uint8)
    c.decode(e, out)
    assert np.array_equal(out, v.view(np.uint8))
    assert np.array_equal(ref.exponent_decode(e, c.get_config(), 2 * n), v.view(np.uint8))
    for _ in range(30):     # corrupt exponent streams: FormatError or some output, never a crash
        bad = bytearray(e)
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(8, len(bad)))
            bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            c.decode(bytes(bad), out)
        except FormatError:
            pass


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("at", [0, 1, 2, 4097, -1])
def test_value_without_a_code_is_named(k, at):
    # a codec fitted on other data refuses a value whose symbol has no code, naming the first
    # such value (the encoder finds it after the stream pass, whichever flush group it is in)
    rng = np.random.default_rng(k)
    x = ((rng.standard_normal(9000) * 0.02).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    c = Exponent(mantissa_bits=k).fit(ArraySource(x.view(np.uint8)), "BF16")
    y = x.copy()
    pos = at % y.size
    y[pos] = 0x7F80 | (y[pos] & 0x8000)          # infinity: an exponent the data never had
    y[-1 if at != -1 else 0] = y[pos]            # a second one after the first
    first = min(pos, y.size - 1 if at != -1 else 0)
    with pytest.raises(ValueError, match=f"value {first} of the chunk"):
        c.encode_buffer(y.view(np.uint8))


def test_chunk_decoder_of_another_kind_refuses():
    # chunk decoders are compiled per kind (segments, small table or packed, k <= 1): one picked
    # for another kind returns an error instead of decoding with the wrong table layout
    from codec.entropy import exponent as ex
    from codec.entropy.huffman import ERR_SEGMENTS, OK

    v = weights(ex.SMALL_CHUNK + 100, 4)
    b = v.view(np.uint8)
    c = Exponent(mantissa_bits=1).fit(ArraySource(b), "BF16")
    e = np.frombuffer(c.encode(b), np.uint8)
    out = np.empty_like(b)
    c.decode(e, out)
    n, nbits, E, R = c._parse(e, v.size, "t")
    v16 = np.empty(n, np.uint16)
    args = (e, n, nbits, E, R, 1, v16) + c._decode_args
    assert ex._chunk_decoder(c.segments, False, 1)(*args) == OK and np.array_equal(v16, v)
    assert ex._chunk_decoder(c.segments, True, 1)(*args) == ERR_SEGMENTS
    assert ex._chunk_decoder(c.segments, False, 2)(*args) == ERR_SEGMENTS


@pytest.mark.parametrize("k", [0, 1])
def test_drifting_chunk_decodes(k):
    # exponents near-constant in the chunk's first sixth, spread out after: the 16-bit packed
    # kernel's segments end far apart and the unfinished ones are regrouped; same values
    n = 1 << 17
    rng = np.random.default_rng(k)
    scale = np.repeat(np.array([1.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0]), -(-n // 6))[:n]
    v = bf16_of((rng.normal(0, 1, n) * scale).astype(np.float32))
    v[:n // 6] = v[0]
    c, (e,) = roundtrip(v, Exponent(mantissa_bits=k), chunk=2 * n)
    # flipped bits in the exponent stream (after the 8-byte header), where the regrouped rounds
    # run: a codec error or some output, and never a byte written outside the output
    E, _ = stream_sizes(n, int.from_bytes(e[4:8], "little"), k)
    guarded = np.full(2 * n + 128, 0xA5, np.uint8)
    for _ in range(40):
        bad = bytearray(e)
        for _ in range(int(rng.integers(1, 4))):
            bad[8 + int(rng.integers(0, E))] ^= 1 << int(rng.integers(0, 8))
        try:
            c.decode(bytes(bad), guarded[64:64 + 2 * n])
        except FormatError:
            pass
        assert (guarded[:64] == 0xA5).all() and (guarded[64 + 2 * n:] == 0xA5).all()
