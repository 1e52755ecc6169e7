"""Canonical length-limited Huffman: construction, round trips, robustness, reference agreement."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec import _reference as ref
from codec.entropy import huffman as H
from codec.errors import FormatError


def _roundtrip(data, max_len=15):
    counts = np.bincount(data, minlength=256 if data.dtype == np.uint8 else int(data.max()) + 1)
    lengths = H.code_lengths(counts, max_len)
    bits, nbits = H.encode(data, lengths)
    out = H.decode(bits, nbits, data.size, lengths, max_len)
    assert np.array_equal(out.astype(np.int64), data.astype(np.int64))
    return lengths, bits, nbits


def test_kraft_and_limit():
    rng = np.random.default_rng(0)
    for max_len in (9, 12, 15, 24, 32):
        counts = (rng.pareto(0.7, 300) * 10).astype(np.int64) + 1  # very skewed: forces limiting
        lengths = H.code_lengths(counts, max_len)
        assert lengths.max() <= max_len and (lengths > 0).all()
        assert sum(2.0 ** -int(x) for x in lengths) <= 1.0


def test_optimal_when_unlimited():
    import heapq
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 1000, 200)
    h = list(counts)
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    assert int((H.code_lengths(counts, 32).astype(np.int64) * counts).sum()) == cost


def test_deterministic():
    counts = np.array([5, 5, 5, 5, 3, 3, 0, 1, 1], np.int64)  # many ties
    a = H.code_lengths(counts, 15)
    for _ in range(3):
        assert np.array_equal(a, H.code_lengths(counts.copy(), 15))
    data = np.repeat(np.arange(9, dtype=np.uint8), counts)
    assert H.encode(data, a)[0].tobytes() == H.encode(data.copy(), a)[0].tobytes()


def test_single_symbol_and_all_symbols():
    _roundtrip(np.full(1001, 7, np.uint8))
    _roundtrip(np.arange(256, dtype=np.uint8).repeat(3))
    rng = np.random.default_rng(2)
    _roundtrip(rng.integers(0, 256, 5000).astype(np.uint8))


def test_long_codes_slow_path():
    # geometric counts give codes up to max_len, longer than the lookup table
    counts = np.array([1 << max(0, 20 - i) for i in range(24)], np.int64)
    data = np.repeat(np.arange(24, dtype=np.uint8), counts)
    np.random.default_rng(3).shuffle(data)
    lengths, _, _ = _roundtrip(data, max_len=20)
    assert lengths.max() > H.LUT_BITS


def test_uint16_alphabet():
    rng = np.random.default_rng(4)
    data = (rng.geometric(0.01, 20000) % 2048).astype(np.uint16)
    _roundtrip(data, max_len=24)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=400), st.integers(8, 32))
def test_property_roundtrip_and_reference(values, max_len):
    data = np.array(values, np.uint8)
    counts = np.bincount(data, minlength=256)
    if np.count_nonzero(counts) > (1 << max_len):
        return
    lengths, bits, nbits = _roundtrip(data, max_len)
    assert np.array_equal(ref.huffman_decode(bits, nbits, data.size, lengths), data)


@pytest.mark.parametrize("nseg", [4, 1, 2, 3, 5, 6, 7, 8])
def test_block_roundtrip_and_reference(nseg):
    rng = np.random.default_rng(5)
    for data in (rng.integers(0, 40, 3000).astype(np.uint8), rng.integers(0, 40, 20000).astype(np.uint8),
                 np.zeros(10, np.uint8), np.zeros(3, np.uint8), np.zeros(0, np.uint8)):
        blk = H.encode_block(data, nseg=nseg)
        assert len(blk) == H.block_size(np.bincount(data, minlength=256), nseg)
        out = np.empty(data.size, np.uint8)
        H.decode_block(np.frombuffer(blk, np.uint8), out, nseg=nseg)
        assert np.array_equal(out, data)
        out[:] = 0
        assert H.block_decoder(nseg, out.size)(np.frombuffer(blk, np.uint8), out, np.empty(0, np.uint8)) == H.BLK_OK
        assert np.array_equal(out, data)
        if data.size:
            assert np.array_equal(ref.huffman_block_decode(blk, data.size, nseg), data)


def test_bad_tables_rejected():
    with pytest.raises(FormatError):
        H.validate_lengths(np.array([1, 1, 1], np.uint8), 15)  # Kraft sum 1.5
    with pytest.raises(FormatError):
        H.validate_lengths(np.array([16, 1], np.uint8), 15)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**9), st.sampled_from(["flip", "truncate", "extend"]))
def test_corrupt_streams_never_crash(seed, how):
    rng = np.random.default_rng(seed)
    data = rng.choice(np.arange(30, dtype=np.uint8), 2000, p=np.r_[[0.5, 0.2], np.full(28, 0.3 / 28)])
    counts = np.bincount(data, minlength=256)
    lengths = H.code_lengths(counts, 15)
    bits, nbits = H.encode(data, lengths)
    bad = bits.copy()
    if how == "flip":
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, bad.size))
            bad[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
        nb = nbits
    elif how == "truncate":
        bad = bad[: int(rng.integers(0, bad.size))]
        nb = min(nbits, 8 * bad.size)
    else:
        nb = nbits + int(rng.integers(1, 40))
        bad = np.concatenate([bad, rng.integers(0, 256, 8).astype(np.uint8)])
    try:
        out = H.decode(bad, nb, data.size, lengths, 15)
    except FormatError:
        return
    assert out.size == data.size


def test_incomplete_code_detects_bad_pattern():
    lengths = np.zeros(256, np.uint8)
    lengths[3] = 1  # single symbol: code "0"; "1" is invalid
    with pytest.raises(FormatError):
        H.decode(np.array([0xFF, 0, 0, 0], np.uint8), 8, 8, lengths, 15)


# --- interleaved segments, table sizes, block segment table ------------------------------------
@pytest.mark.parametrize("nseg", [1, 2, 3, 4, 5, 8, 9])
def test_decode_segments_any_count(nseg):
    rng = np.random.default_rng(nseg)
    data = rng.choice(np.arange(40, dtype=np.uint16), 5003, p=np.r_[[0.4, 0.2], np.full(38, 0.4 / 38)])
    lengths = H.code_lengths(np.bincount(data, minlength=600), 20)
    bits, nbits = H.encode(data, lengths)
    starts = np.concatenate([[0], np.cumsum(lengths.astype(np.int64)[data])])
    seg_out = np.array([(j * data.size) // nseg for j in range(nseg + 1)], np.int64)
    seg_bits = starts[seg_out]
    dec = H.get_decoder(lengths, 20)
    out = np.empty(data.size, np.uint16)
    dec.decode_segments(bits, seg_bits, seg_out, out)
    assert np.array_equal(out, data)
    if nseg > 1:
        for bad in (seg_bits + np.r_[0, np.ones(nseg - 1, np.int64), 0],      # off by one bit
                    seg_bits[::-1].copy(),                                    # decreasing
                    np.r_[seg_bits[:-1], seg_bits[-1] + 8 * bits.size]):      # past the stream
            with pytest.raises(FormatError):
                dec.decode_segments(bits, bad.astype(np.int64), seg_out, np.empty(data.size, np.uint16))


@pytest.mark.parametrize("lut_bits", [8, 9, 10, 11, 12])
def test_table_sizes_agree(lut_bits):
    rng = np.random.default_rng(lut_bits)
    data = (rng.pareto(1.0, 20000) * 3).astype(np.int64).clip(0, 255).astype(np.uint8)  # long codes too
    lengths = H.code_lengths(np.bincount(data, minlength=256), 15)
    bits, nbits = H.encode(data, lengths)
    out = H.Decoder(lengths, 15, lut_bits).decode(bits, nbits, data.size)
    assert np.array_equal(out, data)


def test_block_segment_table_corruption():
    rng = np.random.default_rng(9)
    data = rng.integers(0, 40, 3000).astype(np.uint8)
    blk = bytearray(H.encode_block(data))
    k = int(np.count_nonzero(np.bincount(data, minlength=256)))
    t = 4 + 32 + (k + 1) // 2
    for j in range(3):
        bad = bytearray(blk)
        off = int(np.frombuffer(bytes(bad[t + 4 * j:t + 4 * j + 4]), "<u4")[0])
        bad[t + 4 * j:t + 4 * j + 4] = np.uint32(off + 1).tobytes()
        out = np.empty(data.size, np.uint8)
        with pytest.raises(FormatError):
            H.decode_block(np.frombuffer(bytes(bad), np.uint8), out)
        assert H.block_decoder(4, out.size)(np.frombuffer(bytes(bad), np.uint8), out, np.empty(0, np.uint8)) != H.BLK_OK
        with pytest.raises(FormatError):
            ref.huffman_block_decode(bytes(bad), data.size)
    out = np.empty(data.size, np.uint8)
    assert H.block_decoder(4, out.size)(np.frombuffer(bytes(blk), np.uint8), out, np.empty(0, np.uint8)) == H.BLK_OK
    assert np.array_equal(out, data)


@pytest.mark.parametrize("nseg", [4, 6])
@pytest.mark.parametrize("n", [5000, 200_000, 600_000])
def test_block_packed_kernel_long_codes_and_corruption(n, nseg):
    # geometric counts: codes up to 15 bits, longer than every table size, scattered through the
    # block, so the packed kernel leaves its rounds for canonical steps in all 4 segments
    rng = np.random.default_rng(n)
    data = np.minimum(rng.geometric(0.45, n) - 1, 40).astype(np.uint8)
    blk = np.frombuffer(H.encode_block(data, nseg=nseg), np.uint8)
    assert H.unpack_lengths(blk[4:], "t")[0].max() > 12
    out = np.empty(n, np.uint8)
    assert H.block_decoder(nseg, out.size)(blk, out, blk) == H.BLK_OK
    assert np.array_equal(out, data)
    assert np.array_equal(H.decode_block(blk, np.empty(n, np.uint8), nseg=nseg), data)
    for _ in range(30):     # corrupt bitstreams: an error status or some output, never a crash
        bad = blk.copy()
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(4, bad.size))
            bad[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
        H.block_decoder(nseg, out.size)(bad, out, bad)


@pytest.mark.parametrize("nseg", [4, 6])
def test_block_uneven_segments_finish_alone(nseg):
    # segment 0 codes short symbols (16 outputs a round), the others long codes (~4 a round): the
    # interleaved rounds stop when segment 0 nears its end, the others go on 2 at a time, and
    # each finishes alone, through whole lookups, canonical steps for codes past the
    # table, and single codes at the very end
    rng = np.random.default_rng(7)
    n = 400_000
    data = np.minimum(rng.geometric(0.3, n), 60).astype(np.uint8)
    data[:n // nseg] = 0
    blk = np.frombuffer(H.encode_block(data, nseg=nseg), np.uint8)
    lengths = H.unpack_lengths(blk[4:], "t")[0]
    assert lengths[0] <= 3 and lengths.max() > 12     # 4 codes of symbol 0 fit one 12-bit lookup
    out = np.empty(n, np.uint8)
    assert H.block_decoder(nseg, out.size)(blk, out, blk) == H.BLK_OK
    assert np.array_equal(out, data)
    assert np.array_equal(np.frombuffer(ref.huffman_block_decode(blk.tobytes(), n, nseg), np.uint8), data)


@pytest.mark.parametrize("nseg", [4, 6])
@pytest.mark.parametrize("n", [60_000, 300_000])
def test_block_drifting_segments_regroup(n, nseg):
    # every segment holds the same number of symbols, but each one's codes are longer than the
    # last one's (statistics that drift along a chunk): the interleaved rounds stop when segment 0
    # nears its end, the others go on 2 at a time (codes past the table among them),
    # and each finishes alone. 11- and 12-bit tables.
    rng = np.random.default_rng(n + nseg)
    data = np.empty(n, np.uint8)
    for j in range(nseg):
        lo, hi = (j * n) // nseg, ((j + 1) * n) // nseg
        data[lo:hi] = np.minimum(rng.geometric(0.9 / (j + 1), hi - lo) - 1, 90)
    blk = np.frombuffer(H.encode_block(data, nseg=nseg), np.uint8)
    assert H.unpack_lengths(blk[4:], "t")[0].max() > 12
    out = np.empty(n, np.uint8)
    assert H.block_decoder(nseg, n)(blk, out, blk) == H.BLK_OK
    assert np.array_equal(out, data)
    assert np.array_equal(np.frombuffer(ref.huffman_block_decode(blk.tobytes(), n, nseg), np.uint8), data)
    for _ in range(40):     # corrupt bitstreams or segment starts: an error or some output, never a crash
        bad = blk.copy()
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(4, bad.size))
            bad[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
        H.block_decoder(nseg, n)(bad, out, bad)


@pytest.mark.parametrize("seed", range(6))
def test_range_builder_matches_entry_builder(seed):
    # _build_packed_ranges (block decoding) must give exactly the table of _build_decoder +
    # _build_packed8 (byte lanes) or _build_packed16 (16-bit lanes, symbols shifted), for complete
    # and incomplete codes, short and long ones; and the generic kernel's byte tables (small
    # blocks) split from its entries
    rng = np.random.default_rng(seed)
    for trial in range(40):
        nsym = int(rng.integers(1, 257))
        counts = np.zeros(256, np.int64)
        counts[rng.choice(256, nsym, replace=False)] = (rng.pareto(rng.uniform(0.3, 3), nsym) * 100 + 1).astype(np.int64)
        lengths = H.code_lengths(counts, 15)
        if trial % 3 == 0 and (lengths > 0).sum() > 2:
            lengths[np.flatnonzero(lengths)[0]] = 0      # a hole in the code space
        for bits in (8, 10, 11, 12):
            lut_sym, lut_sym8, lut_info = (np.zeros(1 << bits, np.uint64), np.zeros(1 << bits, np.uint64),
                                           np.zeros(1 << bits, np.uint16))
            canon = [np.zeros(256, np.int64)] + [np.zeros(H.MAX_CODE_LEN + 1, np.int64) for _ in range(3)]
            H._build_decoder(lengths, bits, lut_sym, lut_sym8, lut_info, *canon)
            want = np.empty(1 << bits, np.uint64)
            H._build_packed8(lut_sym8, lut_info, want)
            canon2 = [np.zeros(256, np.int64)] + [np.zeros(H.MAX_CODE_LEN + 1, np.int64) for _ in range(3)]
            H._canonical_tables(lengths, *canon2)
            got = np.full(1 << bits, 0xDEAD, np.uint64)     # every entry must be written
            H._build_packed_ranges(lengths, bits, canon2[1], canon2[2], canon2[3], canon2[0], got, False, 0)
            assert np.array_equal(got, want)
            # the generic kernel's tables, as small blocks derive them from the packed entries
            assert np.array_equal(got >> np.uint64(32), lut_sym8)
            assert np.array_equal((got & np.uint64(0xFFFF)).astype(np.uint16), lut_info)
            for shift in (6, 8):
                want16 = np.empty(1 << bits, np.uint64)
                H._build_packed16(lut_sym, lut_info, shift, want16)
                got16 = np.full(1 << bits, 0xDEAD, np.uint64)
                H._build_packed_ranges(lengths, bits, canon2[1], canon2[2], canon2[3], canon2[0], got16, True, shift)
                assert np.array_equal(got16, want16)
            for a, b in zip(canon, canon2):
                assert np.array_equal(a, b)


def test_code_lengths_same_for_scaled_counts():
    # scaling every count by 2^k leaves Huffman's merges unchanged; counts past 2^(62 - log2 n)
    # take the mergesort path instead of the packed (count, position) keys
    rng = np.random.default_rng(21)
    for n_sym in (2, 3, 256, 2048):
        for _ in range(20):
            c = rng.integers(0, 1 << 20, n_sym) * (rng.random(n_sym) < 0.7)
            if not c.any():
                continue
            small = H.code_lengths(c, 15 if n_sym <= 256 else 24)
            big = H.code_lengths(c << 40, 15 if n_sym <= 256 else 24)
            assert np.array_equal(small, big)


def test_block_decoder_of_another_size_refuses():
    # decoders are compiled per table size (from the symbol count): one picked for another count
    # returns an error instead of decoding with the wrong table
    data = np.random.default_rng(3).integers(0, 30, 10000).astype(np.uint8)      # 10-bit tables
    blk = np.frombuffer(H.encode_block(data, nseg=6), np.uint8)
    out = np.empty(data.size, np.uint8)
    assert H.block_decoder(6, out.size) is H.BLOCK_DECODERS[H.table_index(6, 10)]
    assert H.BLOCK_DECODERS[H.table_index(6, 12)](blk, out, blk) == H.ERR_SEGMENTS
    assert H.block_decoder(6, out.size)(blk, out, blk) == H.BLK_OK and np.array_equal(out, data)


def test_specialized_kernels_have_names_of_their_own():
    # numba names compiled code by qualified name, argument types and a per-process counter, and
    # links callees by that name: closures of one factory sharing a name, compiled by two
    # processes and loaded from the cache into a third, ran each other's code (a chunk decoder
    # called another one's block decoder). Every specialization must have a name of its own.
    from codec.entropy import exponent as ex
    from codec.transforms import bytegroup as bg

    tables = (H.BLOCK_DECODERS, H.WIDE_BLOCK_DECODERS, H.PACKED16_KERNELS, H.PACKED8_KERNELS)
    # flat tables: numba types a tuple of tuples of functions as first-class function values
    assert not any(isinstance(d, tuple) for t in tables for d in t)
    disps = {id(d): d for d in H.BLOCK_DECODERS if d is not None}     # (entries share decoders)
    assert len(disps) == 8 + 2 * 3         # a generic decoder per count, 3 table sizes for 4 and 6
    disps = list(disps.values()) + [d for t in tables[1:] for d in t if d is not None]
    disps += [H._make_packed_tail(b, bits) for b in (1, 2) for bits in (10, 11, 12)]
    kinds = {(s, H._block_kind(s, bits), w) for s in (1, 4, 6) for bits in H.BLOCK_LUT_BITS for w in (False, True)}
    disps += [bg._make_chunk_decoder(*kind) for kind in kinds]
    disps += [ex._make_chunk_decoder(s, small, narrow) for s in (3, 4, 6) for small in (False, True)
              for narrow in (False, True)]
    disps += [ex._make_encoder(k, s) for k in (0, 1, 2) for s in (4, 6)]
    names = [f"{d.py_func.__module__}.{d.py_func.__qualname__}" for d in disps]
    assert len(disps) > 50 and len(set(names)) == len(names)
