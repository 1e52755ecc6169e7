"""`exponent`: DFloat11-style coding of BF16: Huffman on the exponent (optionally joined with the top
mantissa bits), the remaining sign and mantissa bits stored as a fixed-width raw stream.

Normative description (also in formats/EXPONENT.md, which the GPU kernel follows).

Fields of one BF16 value v (16 bits): sign s = bit 15, exponent e = bits 14..7, mantissa m = bits 6..0.
With k = `mantissa_bits` (0..3, 0 is exactly DFloat11):
    symbol    = (v >> (7 - k)) & ((1 << (8 + k)) - 1)        # e followed by the top k mantissa bits
    remainder = (s << (7 - k)) | (m & ((1 << (7 - k)) - 1))   # w = 8 - k bits: sign, low mantissa
    v         = ((remainder >> (7 - k)) << 15) | (symbol << (7 - k)) | (remainder & ((1 << (7 - k)) - 1))
The symbol alphabet has 256 << k entries; one canonical Huffman table per tensor (fitted over the
whole tensor in `fit`, codes at most `max_code_len` <= 32 bits) is stored in the frame's JSON config
as `code_lengths`: a list of [symbol, length] pairs for the symbols with a code, sorted by symbol.

Chunk payload (a chunk is a run of whole BF16 values, little-endian; n = decoded bytes / 2):
    offset 0      u32 LE  n            number of values in the chunk
    offset 4      u32 LE  exp_bits     number of bits of Huffman codes in the exponent stream
    offset 8      exponent stream, E = 8 * ceil(exp_bits / 64) + 8 bytes: the n codes MSB-first
                  (huffman.py bit order), zero bits to a multiple of 64 bits, then 8 zero bytes, so
                  a reader may load any 8-byte window of the stream plus 8 bytes past it
    offset 8 + E  remainder stream, R = ceil(n * w / 8) bytes: the n w-bit remainders MSB-first,
                  value i at bits [i*w, i*w + w); the last byte padded with zero bits
    offset 8+E+R  segment table, S - 1 x u32 LE, S = the config's `segments` (1..8; a config
                  without the key, as every file before it, has S = 4; new files have S = 6): for
                  j = 1 .. S - 1 the bit offset (within the exponent stream) at which the code of
                  value (j * n) // S starts. CPU decoders split the stream there into S independent
                  segments and decode them interleaved (huff0 style); a decoder must reject offsets
                  that decrease, exceed exp_bits, or do not end a segment exactly where the next
                  begins. The GPU kernel ignores the table.
The payload is exactly 8 + E + R + 4 (S - 1) bytes; anything else is a FormatError. For k = 0 the
remainder stream is DFloat11's sign+mantissa byte per value. (The exponent stream and the
remainder stream sit at the same offsets as without the table, so rem_offset = 8 + E.)

GPU sync section (type 4, GPU_SYNC), only when the codec is configured with `gpu_sync=True`
(it costs about 1/BYTES_PER_THREAD of the exponent stream). Little-endian throughout:
    0   4s   magic b"GSY1"
    4   u16  bytes_per_thread (BPT, default 8)   6  u16  threads_per_block (TPB, default 256)
    8   u32  n_chunks                            12 u32  n_blocks (all chunks)
    16  u32  mantissa_bits k                     20 u32  reserved, 0
    24  chunk table, n_chunks entries of 32 bytes:
            u64 first_value   index of the chunk's first value in the tensor
            u32 n_values      values in the chunk
            u32 exp_bits      as in the chunk header
            u32 exp_offset    byte offset of the exponent stream in the chunk payload (8), 0 if raw
            u32 rem_offset    byte offset of the remainder stream in the chunk payload, 0 if raw
            u32 first_block   index of the chunk's first block
            u32 n_blocks      blocks of this chunk (0 when the container stored the chunk raw)
        block table, n_blocks entries of 16 bytes:
            u32 chunk         the chunk this block decodes
            u32 first_window  index of its first window within the chunk's exponent stream
            u64 out_start     index (within the chunk) of the first value whose code starts at or
                              after bit first_window * BPT * 8; the block writes values
                              [out_start, next block's out_start or n_values) and drops the rest
        gaps, TPB bytes per block (u8): window t of block b covers bits
            [(first_window + t) * BPT * 8, +BPT * 8) of the chunk's exponent stream; its gap is the
            offset in bits (0..max_code_len-1) of the first code starting in it, or 255 when no code
            starts in it (past the end of the stream or in its tail after the last code).
A thread decodes every code that starts in its window (the last one may run up to 32 bits past the
window's end, which the 8 padding bytes keep in bounds); the block's prefix sum of per-thread counts
plus out_start gives each value's position. Codes decoded from zero padding after the last real code
land at positions >= the block's end and are dropped.
"""
from __future__ import annotations

import struct
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat, entropy_bits_of_counts
from . import huffman

HEADER = 8
# Segments of the exponent stream that CPU decoders decode interleaved: config `segments`, see
# huffman.DEFAULT_SEGMENTS (6 for new files, 4 when absent, as in every file before it)
DEFAULT_SEGMENTS = huffman.DEFAULT_SEGMENTS
GPU_SYNC_SECTION = 4
DEFAULT_BPT = 8
DEFAULT_TPB = 256
DEFAULT_MAX_LEN = 24
DEFAULT_CHUNK = 1 << 20
# Chunks of fewer values (a model's bias and norm vectors) decode with a 2^SMALL_LUT_BITS-entry
# table: a few hundred lookups would otherwise miss on most lines of a cold 32 KiB table.
SMALL_CHUNK = 4096
SMALL_LUT_BITS = 8


def stream_sizes(n: int, exp_bits: int, k: int) -> tuple[int, int]:
    """(E, R): byte sizes of the exponent and remainder streams of a chunk."""
    return 8 * ((exp_bits + 63) // 64) + 8, (n * (8 - k) + 7) // 8


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@nb.njit(nogil=True, cache=True)
def _hist15(v, shift, hist):
    """hist[(v >> shift) & (hist.size - 1)] += 1 over uint16 values (the exponent and mantissa
    bits, or the top ones of them)."""
    mask = np.uint16(hist.shape[0] - 1)
    sh = np.uint16(shift)
    for i in range(v.shape[0]):
        hist[(v[i] >> sh) & mask] += 1


@nb.njit(nogil=True, cache=True)
def _fit_table(hist, n, ks, max_len):
    """(k, code lengths) of the cheapest candidate k in ks for a histogram of the top bits of n
    values (hist.size = 256 << kmax bins or more, each symbol's bins contiguous): Huffman bits +
    remainder bits + ~7 JSON characters per code in the config. One compiled call: in Python the
    per-candidate sums and calls took ~35 us a tensor, most of a bias vector's fit."""
    best_k = np.int64(-1)
    best_cost = np.int64(0)
    best = np.zeros(0, np.uint8)
    for k in ks:
        size = 256 << k
        group = hist.shape[0] // size
        counts = np.zeros(size, np.int64)
        for s in range(size):
            acc = np.int64(0)
            for j in range(s * group, (s + 1) * group):
                acc += hist[j]
            counts[s] = acc
        if n == 0:
            counts[0] = 1
        lengths = huffman._limit_lengths(counts, huffman._huffman_lengths(counts), max_len)
        bits = np.int64(0)
        used = np.int64(0)
        for s in range(size):
            bits += counts[s] * lengths[s]
            used += lengths[s] > 0
        cost = bits + n * (8 - k) + 8 * 7 * used
        if best_k < 0 or cost < best_cost:
            best_k = k
            best_cost = cost
            best = lengths.astype(np.uint8)
    return best_k, best


@nb.njit(nogil=True, cache=True, inline="always")
def _put_value(v, sh, smask, lengths, codes, acc, nacc, neg):
    """huffman._put_code for the symbol of BF16 value v; neg turns negative if it has no code."""
    s = (np.uint64(v) >> np.uint64(sh)) & np.uint64(smask)
    acc, nacc = huffman._put_code(acc, nacc, codes[s], lengths[s])
    return acc, nacc, neg | (np.int64(lengths[s]) - 1)


def _make_encoder(k, NSEG):
    """_encode_chunk for k mantissa bits and NSEG segments: field shifts and masks as compile-time
    constants (the exponent-stream loop is instruction bound; runtime ones cost 8 % there)."""
    TRAILER = huffman.segment_table_size(NSEG)
    # plain ints: numba's cache keys a closure on its cell values, and numpy scalars there made
    # every process compile anew (1.2 s) and add a cache entry
    SH_ = 7 - k
    SMASK_ = (1 << (8 + k)) - 1
    W = 8 - k
    LMASK_ = (1 << (7 - k)) - 1

    @huffman.njit_named(f"_encode_chunk_k{k}_s{NSEG}")
    def encode_chunk(b, lengths, codes, out_status):
        """Whole chunk payload (see the layout above) of the n = b.size // 2 BF16 values in bytes b.

        out_status[0] = 0, or 1 + i when value i has a symbol without a code (the payload is
        then empty). One pass writes the exponent stream into room for the longest codes, noting
        where each segment starts; the remainder stream then goes right after the stream's end.
        """
        n = b.shape[0] // 2
        sh = np.uint64(SH_)
        w = W
        v16 = b[:2 * n].view(np.uint16)
        lmax = np.int64(1)
        for s in range(lengths.shape[0]):
            lmax = max(lmax, np.int64(lengths[s]))
        R = (n * w + 7) // 8
        out = np.empty(HEADER + 8 * ((n * lmax + 63) // 64) + 8 + R + TRAILER, np.uint8)
        seg = np.empty(NSEG + 1, np.int64)
        # exponent stream: a 64-bit accumulator flushed after every code (unaligned 8-byte stores
        # whose spare bytes are zeros ahead of the stream; codes are <= 32 bits), one loop over
        # a slice per segment (see huffman._encode_segmented)
        acc = np.uint64(0)
        nacc = np.int64(0)
        p = np.int64(HEADER)
        i0 = 0
        # acc holds the pending bits left-aligned (top nacc < 8); codes are ORed in below them
        # and one 8-byte store flushes the whole bytes after every g codes, g * lmax + 7 <= 64
        # (as huffman._encode_run). A symbol without a code has length 0: `neg` turns negative
        # and the value is found afterwards (no branch per code).
        g = 3 if lmax <= 19 else (2 if lmax <= 28 else 1)
        neg = np.int64(0)
        for j in range(NSEG):
            seg[j] = 8 * (p - HEADER) + nacc
            i1 = ((j + 1) * n) // NSEG
            run = v16[i0:i1]
            m = run.shape[0]
            t0 = 0
            if g == 3:
                for q in range(m // 3):
                    i = np.uint64(3 * q)
                    acc, nacc, neg = _put_value(run[i], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                    acc, nacc, neg = _put_value(run[i + np.uint64(1)], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                    acc, nacc, neg = _put_value(run[i + np.uint64(2)], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                    p, acc, nacc = huffman._flush(out, p, acc, nacc)
                t0 = 3 * (m // 3)
            elif g == 2:
                for q in range(m // 2):
                    i = np.uint64(2 * q)
                    acc, nacc, neg = _put_value(run[i], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                    acc, nacc, neg = _put_value(run[i + np.uint64(1)], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                    p, acc, nacc = huffman._flush(out, p, acc, nacc)
                t0 = 2 * (m // 2)
            for i in range(t0, m):
                acc, nacc, neg = _put_value(run[i], SH_, SMASK_, lengths, codes, acc, nacc, neg)
                p, acc, nacc = huffman._flush(out, p, acc, nacc)
            i0 = i1
        if neg < 0:
            for i in range(n):
                if lengths[(np.uint64(v16[i]) >> np.uint64(SH_)) & np.uint64(SMASK_)] == 0:
                    out_status[0] = 1 + i
                    return np.zeros(0, np.uint8)
        total = 8 * (p - HEADER) + nacc
        seg[NSEG] = total
        E = 8 * ((total + 63) // 64) + 8
        out[p + (1 if nacc else 0):HEADER + E] = 0      # the padding (the last store zeroed part of it)
        for t in range(4):
            out[t] = (n >> (8 * t)) & 255
            out[4 + t] = (total >> (8 * t)) & 255
        roff = HEADER + E
        rem = out[roff:roff + R]    # indexed from 0: no negative-index handling, so loops vectorize
        if w == 8:
            for i in range(n):
                x = v16[i]
                rem[i] = np.uint8(((x >> np.uint16(8)) & np.uint16(128)) | (x & np.uint16(127)))
        else:
            lmask = np.uint64(LMASK_)
            ng = n // 8
            for g in range(ng):
                # 8 * w bits, left-aligned, from independent terms (a shift-or chain is 3x slower);
                # the 8-byte store's spare byte lands in the next group or past the stream, both
                # written afterwards
                q = np.uint64(0)
                for j in range(8):
                    x = np.uint64(v16[8 * g + j])
                    q |= (((x >> np.uint64(15)) << sh) | (x & lmask)) << np.uint64(64 - w * (j + 1))
                huffman._store_be64(out, roff + g * w, q)
            acc = np.uint64(0)
            nacc = np.int64(0)
            p = roff + ng * w
            for i in range(8 * ng, n):
                x = np.uint64(v16[i])
                acc = (acc << np.uint64(w)) | ((x >> np.uint64(15)) << sh) | (x & lmask)
                nacc += w
                if nacc >= 8:
                    nacc -= 8
                    out[p] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
                    p += 1
            if nacc > 0:
                out[p] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(255))
        tr = roff + R
        for j in range(1, NSEG):
            for t in range(4):
                out[tr + 4 * (j - 1) + t] = (seg[j] >> (8 * t)) & 255
        out_status[0] = 0
        return out[:tr + TRAILER]
    return encode_chunk


_encoders: dict = {}


def _encoder(k, nseg):
    enc = _encoders.get((k, nseg))
    if enc is None:
        enc = _encoders[(k, nseg)] = _make_encoder(k, nseg)
    return enc


# ---------------------------------------------------------------------------------------------
# decoding: symbols already in place, then the remainders merged in
# ---------------------------------------------------------------------------------------------
# The Huffman pass (huffman's packed kernels) writes every value as symbol << (7 - k), the exact
# bits it has in the BF16 value, plus garbage in the low 7 - k bits, where the packed table keeps
# its lookup fields. The merge pass masks those bits and ORs in sign and low mantissa bits, 32
# values per vector step.
LUT_BITS = huffman.LUT_BITS


def packed_table(dec: huffman.Decoder, k: int) -> np.ndarray:
    """The packed table of a LUT_BITS decoder of an exponent code with k mantissa bits (cached)."""
    if dec.lut_bits != LUT_BITS or dec.lengths.size > (256 << k):
        raise ValueError("packed tables need LUT_BITS-bit lookups and an alphabet of 256 << k symbols")
    lut = dec.extra.get(("exponent", k))
    if lut is None:
        lut = np.empty(1 << LUT_BITS, np.uint64)
        huffman._build_packed16(dec.lut_sym, dec.lut_info, 7 - k, lut)
        dec.extra[("exponent", k)] = lut
    return lut


def _make_merge(W, G):
    """Intrinsic merge(buf, q, v16, i): OR the 8 * G W-bit remainders packed MSB-first at
    buf[q:q + W * G] into v16[i:i + 8 * G], which hold their symbols shifted into place and garbage
    in the low W - 1 bits (as huffman's packed kernels leave them). It loads `merge.load` bytes at
    q (the caller keeps them inside buf).

    Vector code: one byte shuffle gives each value the big-endian 16-bit window holding its field,
    one per-lane shift aligns the fields; LLVM lowers it to the host's SIMD (pshufb, vpsrlvw...).
    """
    m = 8 * G                                   # values per call
    sh = W - 1                                  # low mantissa bits per value
    first = [(W * j) >> 3 for j in range(m)]    # byte holding the field's first bit
    shuffle = [x for j in range(m) for x in (first[j] + 1, first[j])]   # little-endian lanes
    shifts = [16 - W - ((W * j) & 7) for j in range(m)]
    symmask = ((1 << (16 - W)) - 1) << sh       # exponent (+ top mantissa) bits of the value
    load = 8
    while load < first[-1] + 2:
        load *= 2
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    vload, vval = ir.VectorType(i8, load), ir.VectorType(i16, m)

    def splat(x):
        return ir.Constant(vval, [x] * m)

    @intrinsic
    def merge(typingctx, buf, q, v16, i):
        if not (isinstance(buf, types.Array) and buf.dtype == types.uint8 and isinstance(q, types.Integer)
                and isinstance(v16, types.Array) and v16.dtype == types.uint16
                and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            b = context.make_array(signature.args[0])(context, builder, args[0])
            v = context.make_array(signature.args[2])(context, builder, args[2])
            qq = context.cast(builder, args[1], signature.args[1], types.intp)
            ii = context.cast(builder, args[3], signature.args[3], types.intp)
            x = builder.load(builder.bitcast(builder.gep(b.data, [qq]), vload.as_pointer()), align=1)
            y = builder.shuffle_vector(x, ir.Constant(vload, None),
                                       ir.Constant(ir.VectorType(i32, 2 * m), shuffle))
            r = builder.and_(builder.lshr(builder.bitcast(y, vval), ir.Constant(vval, shifts)),
                             splat((1 << W) - 1))
            rem = builder.or_(builder.shl(builder.lshr(r, splat(sh)), splat(15)),     # sign -> bit 15
                              builder.and_(r, splat((1 << sh) - 1)))
            vp = builder.bitcast(builder.gep(v.data, [ii]), vval.as_pointer())
            old = builder.load(vp, align=2)
            builder.store(builder.or_(builder.and_(old, splat(symmask)), rem), vp, align=2)
            return context.get_dummy_value()
        return types.void(buf, q, v16, i), codegen
    merge.load = load
    return merge


MERGE_GROUPS = 4     # groups of 8 values per wide merge step (32 values: one 512-bit vector)
_merge7, _merge6, _merge5 = (_make_merge(W, 1) for W in (7, 6, 5))
_mergew7, _mergew6, _mergew5 = (_make_merge(W, MERGE_GROUPS) for W in (7, 6, 5))
_WIDE_LOAD = max(m.load for m in (_mergew7, _mergew6, _mergew5))


@nb.njit(nogil=True, cache=True)
def _merge_range(v16, buf, roff, R, k, i0, i1):
    """v16[i0:i1] hold symbol << (7 - k) plus garbage low bits: OR in their remainders (stream at
    buf[roff:roff + R]) to give BF16 values. i0 must be a multiple of 8."""
    w = 8 - k
    sh = 7 - k
    lmask = np.uint16((1 << sh) - 1)
    smask = np.uint16(0x7FFF) & ~lmask
    if w == 8:      # a byte per value; slices keep the loop free of index checks (it vectorizes)
        rem = buf[roff + i0:roff + i1]
        vv = v16[i0:i1]
        for i in range(min(rem.shape[0], vv.shape[0])):
            r = np.uint16(rem[i])
            vv[i] = ((r & np.uint16(128)) << np.uint16(8)) | (vv[i] & smask) | (r & np.uint16(127))
        return
    # whole groups of 8 values (w bytes) whose loads stay inside buf: vector code, MERGE_GROUPS
    # groups a step, then one at a time
    g0 = i0 >> 3
    nwide = (buf.shape[0] - roff - _WIDE_LOAD) // w + 1 - g0     # groups from g0 a wide load may start at
    gw = g0 + max(0, min((i1 >> 3) - g0, nwide)) // MERGE_GROUPS * MERGE_GROUPS
    g1 = max(gw, min(i1 >> 3, (buf.shape[0] - roff - 8) // w + 1))
    if w == 7:
        for g in range(g0, gw, MERGE_GROUPS):
            _mergew7(buf, roff + 7 * g, v16, 8 * g)
        for g in range(gw, g1):
            _merge7(buf, roff + 7 * g, v16, 8 * g)
    elif w == 6:
        for g in range(g0, gw, MERGE_GROUPS):
            _mergew6(buf, roff + 6 * g, v16, 8 * g)
        for g in range(gw, g1):
            _merge6(buf, roff + 6 * g, v16, 8 * g)
    else:
        for g in range(g0, gw, MERGE_GROUPS):
            _mergew5(buf, roff + 5 * g, v16, 8 * g)
        for g in range(gw, g1):
            _merge5(buf, roff + 5 * g, v16, 8 * g)
    end = roff + R
    for i in range(8 * g1, i1):
        bit = i * w
        byte = roff + (bit >> 3)
        two = np.int64(buf[byte]) << 8
        if byte + 1 < end:
            two |= np.int64(buf[byte + 1])
        r = (two >> (16 - w - (bit & 7))) & ((1 << w) - 1)
        v16[i] = np.uint16(((r >> sh) << 15) | (np.int64(v16[i]) & np.int64(smask)) | (r & np.int64(lmask)))


def _make_chunk_decoder(nseg, small, narrow):
    """The chunk decoder for nseg segments, (buf, n, nbits, E, R, k, v16, packed, lut_sym,
    lut_info, sorted_syms, first_code, first_index, len_count, max_len) -> a status: decodes a
    chunk payload (sizes checked by the caller) into the uint16 values v16; `packed` is
    packed_table(decoder, k), the other tables the decoder's uint16 ones. A small chunk (empty
    `packed`, the tables of a small decoder: see SMALL_CHUNK) or a segment count without a packed
    kernel takes the generic kernel (for any k); narrow: k <= 1, whose packed entries leave bits
    4-5 free. The three are closure constants, so only the kernel this kind of chunk needs
    compiles (about 2 s each)."""
    generic = small or not huffman.has_packed_kernels(nseg)
    kernel = 2 * nseg + int(narrow)     # in huffman.PACKED16_KERNELS

    @huffman.njit_named(f"_decode_chunk_s{nseg}_small{int(small)}_narrow{int(narrow)}")
    def decode_chunk(buf, n, nbits, E, R, k, v16, packed, lut_sym, lut_info, sorted_syms, first_code,
                     first_index, len_count, max_len):
        seg_bits = np.empty(nseg + 1, np.int64)
        seg_out = np.empty(nseg + 1, np.int64)
        t = HEADER + E + R
        for j in range(nseg + 1):
            seg_out[j] = (j * n) // nseg
        seg_bits[0] = 0
        seg_bits[nseg] = nbits
        for j in range(1, nseg):
            q = t + 4 * (j - 1)
            seg_bits[j] = np.int64(buf[q]) | (np.int64(buf[q + 1]) << 8) | (np.int64(buf[q + 2]) << 16) \
                | (np.int64(buf[q + 3]) << 24)
            if seg_bits[j] > nbits:
                return huffman.ERR_SEGMENTS
        src = buf[HEADER:HEADER + E]
        if (packed.shape[0] == 0) != small or (not generic and (k <= 1) != narrow):
            return huffman.ERR_SEGMENTS     # (the caller's mistake: another kind's decoder)
        if generic:
            # a small chunk (generic kernel on a small table, see SMALL_CHUNK) or a segment count
            # without a packed kernel
            st = huffman._decode_segments(src, seg_bits, seg_out, v16, lut_sym, lut_info, sorted_syms,
                                          first_code, first_index, len_count, max_len)
            if st == huffman.OK:
                huffman._shift_range(v16, 0, n, 7 - k)
                _merge_range(v16, buf, HEADER + E, R, k, 0, n)
            return st
        rem = buf[HEADER + E:HEADER + E + R]    # the merge's input: prefetched during the Huffman pass
        st = huffman.PACKED16_KERNELS[kernel](src, seg_bits, seg_out, v16, packed, 7 - k, rem, sorted_syms,
                                              first_code, first_index, len_count, max_len)
        if st == huffman.OK:
            _merge_range(v16, buf, HEADER + E, R, k, 0, n)
        return st
    return decode_chunk


_CHUNK_DECODERS: dict = {}


def _chunk_decoder(nseg: int, small: bool, k: int):
    generic = small or not huffman.has_packed_kernels(nseg)     # one generic decoder for every k
    kind = (nseg, small, generic or k <= 1)
    dec = _CHUNK_DECODERS.get(kind)
    if dec is None:
        dec = _CHUNK_DECODERS[kind] = _make_chunk_decoder(*kind)
    return dec


@nb.njit(nogil=True, cache=True)
def _code_starts_sync(syms, lengths, exp_bits, bpt, tpb, gaps_out, block_first_window, block_out_start):
    """GPU sync data of one chunk: per window the gap, per block its first value index."""
    wbits = bpt * 8
    nwin = gaps_out.shape[0]
    for t in range(nwin):
        gaps_out[t] = 255
    nblocks = block_first_window.shape[0]
    for b in range(nblocks):
        block_first_window[b] = b * tpb
        block_out_start[b] = -1
    pos = 0
    n = syms.shape[0]
    for i in range(n):
        w = pos // wbits
        if gaps_out[w] == 255:
            gaps_out[w] = pos - w * wbits
        pos += lengths[syms[i]]
    # out_start of block b = number of codes starting before bit b*tpb*wbits
    pos = 0
    b = 0
    for i in range(n):
        while b < nblocks and pos >= b * tpb * wbits:
            block_out_start[b] = i
            b += 1
        pos += lengths[syms[i]]
    while b < nblocks:
        block_out_start[b] = n
        b += 1


# ---------------------------------------------------------------------------------------------
# the codec
# ---------------------------------------------------------------------------------------------
def _dense_lengths(pairs, k: int, max_len: int) -> np.ndarray:
    size = 256 << k
    if not isinstance(pairs, list):
        raise FormatError("exponent codec: code_lengths must be a list of [symbol, length] pairs")
    lengths = bytearray(size)
    last = -1
    for item in pairs:
        if (type(item) is not list and type(item) is not tuple) or len(item) != 2 \
                or type(item[0]) is not int or type(item[1]) is not int:
            raise FormatError(f"exponent codec: bad code_lengths entry {item!r:.80}")
        s, ln = item
        if not last < s < size:
            raise FormatError(f"exponent codec: code_lengths symbols must be increasing and < {size}, got {s}")
        if not 1 <= ln <= max_len:
            raise FormatError(f"exponent codec: code length {ln} of symbol {s} outside [1, {max_len}]")
        lengths[s] = ln
        last = s
    return huffman.validate_lengths(np.frombuffer(lengths, np.uint8), max_len, "exponent codec code table")


@register_codec
class Exponent(Codec):
    codec_id = "exponent"
    description = ("BF16: Huffman on the exponent (+ top mantissa bits), raw sign/mantissa "
                   "(DFloat11 layout, GPU sync index)")
    # worst case: every code max_len bits + padding + header
    max_expansion = 2.6
    # 512 KiB: enough work per chunk to hide the per-chunk cost, enough chunks for threads
    default_chunk_size = 1 << 19

    def __init__(self, mantissa_bits: int | None = None, max_code_len: int = DEFAULT_MAX_LEN,
                 code_lengths: list | None = None, gpu_sync: bool = False,
                 bytes_per_thread: int = DEFAULT_BPT, threads_per_block: int = DEFAULT_TPB,
                 candidates: list | None = None, segments: int | None = None):
        if mantissa_bits is not None and (not isinstance(mantissa_bits, int) or not 0 <= mantissa_bits <= 3):
            raise ValueError(f"mantissa_bits must be 0..3, got {mantissa_bits!r}")
        if not isinstance(max_code_len, int) or not 12 <= max_code_len <= huffman.MAX_CODE_LEN:
            raise ValueError(f"max_code_len must be in [12, 32], got {max_code_len!r}")
        if not isinstance(gpu_sync, bool):
            raise ValueError("gpu_sync must be a boolean")
        if bytes_per_thread not in (4, 8, 16, 32, 64) or threads_per_block not in (32, 64, 128, 256, 512, 1024):
            raise ValueError("bytes_per_thread must be 4..64 (power of two), threads_per_block 32..1024")
        # None: the writer's default; a stored config without the key reads as 4 (from_config)
        self.segments = huffman.checked_segments(segments)
        self.segments_given = segments is not None
        self.mantissa_bits = mantissa_bits
        self.max_code_len = max_code_len
        self.gpu_sync = gpu_sync
        self.bytes_per_thread = bytes_per_thread
        self.threads_per_block = threads_per_block
        # mantissa_bits values fit() may choose from (not part of the stream config)
        self.candidates = list(candidates) if candidates else [0, 1]
        if any(type(k) is not int or not 0 <= k <= 3 for k in self.candidates):
            raise ValueError(f"candidates must be mantissa_bits values 0..3, got {candidates!r}")
        self.lengths: np.ndarray | None = None
        self._decoder = None
        self._decode_args = None
        self._small_args = None
        self._codes = None
        if code_lengths is not None:
            if mantissa_bits is None:
                raise ValueError("code_lengths given without mantissa_bits")
            self.lengths = _dense_lengths(code_lengths, mantissa_bits, max_code_len)

    # -- frame level ---------------------------------------------------------------------
    def fit(self, source, dtype: str) -> "Exponent":
        if dtype != "BF16":
            raise ValueError(f"the exponent codec codes BF16 tensors, not {dtype}")
        ks = [self.mantissa_bits] if self.mantissa_bits is not None else self.candidates
        # Small tensors (biases, norms) histogram only the symbol bits of the largest k: zeroing
        # and summing 2^15 counts would cost more than counting them. Large ones count all 15
        # bits, which runs faster (fewer increments of one cell in a row).
        kmax = max(ks)
        small = source.size < (1 << 17)
        hist = np.zeros(256 << kmax if small else 1 << 15, np.int64)
        n = 0
        for piece in source.iter_chunks(DEFAULT_CHUNK):
            if piece.size % 2:
                raise ValueError("BF16 data must have an even number of bytes")
            _hist15(piece.view("<u2") if piece.flags.c_contiguous else piece.copy().view("<u2"),
                    7 - kmax if small else 0, hist)
            n += piece.size // 2
        k, lengths = _fit_table(hist, n, np.array(ks, np.int64), self.max_code_len)
        fitted = Exponent(int(k), self.max_code_len, None, self.gpu_sync, self.bytes_per_thread,
                          self.threads_per_block,
                          segments=self.segments if self.segments_given else DEFAULT_SEGMENTS)
        fitted.lengths = lengths
        return fitted

    def chunk_alignment(self) -> int:
        return 2

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, "mantissa_bits": self.mantissa_bits,
                               "max_code_len": self.max_code_len}
        if self.lengths is not None:
            nz = np.flatnonzero(self.lengths)
            cfg["code_lengths"] = [[int(s), int(self.lengths[s])] for s in nz]
        else:
            cfg["code_lengths"] = None
        cfg["gpu_sync"] = self.gpu_sync
        cfg["bytes_per_thread"] = self.bytes_per_thread
        cfg["threads_per_block"] = self.threads_per_block
        if self.segments != huffman.LEGACY_SEGMENTS:    # 4: the 1.0 layout, byte for byte
            cfg["segments"] = self.segments
        return cfg

    @classmethod
    def from_config(cls, config):
        params = {k: v for k, v in config.items() if k != "id"}
        unknown = set(params) - {"mantissa_bits", "max_code_len", "code_lengths", "gpu_sync",
                                 "bytes_per_thread", "threads_per_block", "segments"}
        if unknown:
            raise FormatError(f"exponent codec: unknown config keys {sorted(unknown)}")
        return huffman.from_config_with_segments(cls, params)

    def describe(self) -> str:
        k = self.mantissa_bits
        return (f"exponent(k={k},max_len={self.max_code_len},segments={self.segments}"
                f"{',gpu_sync' if self.gpu_sync else ''})")

    def _need_table(self):
        if self.lengths is None:
            raise ValueError("the exponent codec needs a code table: call fit() first "
                             "(or give mantissa_bits and code_lengths)")

    # -- chunk level ---------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> bytes:
        return self.encode_buffer(chunk).tobytes()

    def encode_buffer(self, chunk: np.ndarray) -> np.ndarray:
        """`encode` as a uint8 array (no copy into a bytes object; the container writes it)."""
        self._need_table()
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        if chunk.size % 2:
            raise ValueError(f"BF16 chunk of odd size {chunk.size}")
        if self._codes is None:
            self._codes = huffman.canonical_codes(self.lengths)
        st = np.zeros(1, np.int64)
        out = _encoder(self.mantissa_bits, self.segments)(chunk, self.lengths, self._codes, st)
        if st[0]:
            i = int(st[0]) - 1
            v = int(chunk[2 * i]) | (int(chunk[2 * i + 1]) << 8)
            sym = (v >> (7 - self.mantissa_bits)) & ((1 << (8 + self.mantissa_bits)) - 1)
            raise ValueError(f"value {i} of the chunk has symbol {sym}, which has no code "
                             "in this tensor's table (fit the codec on the data it encodes)")
        return out

    def _parse(self, buf: np.ndarray, n_expected: int | None, what: str):
        if buf.size < HEADER:
            raise FormatError(f"{what}: payload of {buf.size} bytes is shorter than the 8-byte header")
        n, nbits = struct.unpack_from("<II", buf)
        if n_expected is not None and n != n_expected:
            raise FormatError(f"{what}: holds {n} values, expected {n_expected}")
        E, R = stream_sizes(n, nbits, self.mantissa_bits)
        if nbits > n * self.max_code_len or nbits < n:
            raise FormatError(f"{what}: {nbits} code bits for {n} values is impossible "
                              f"(codes are 1..{self.max_code_len} bits)")
        size = HEADER + E + R + huffman.segment_table_size(self.segments)
        if buf.size != size:
            raise FormatError(f"{what}: payload is {buf.size} bytes, its header implies {size} "
                              f"({self.segments} segments)")
        return n, nbits, E, R

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        self._need_table()
        what = "exponent chunk"
        buf = np.frombuffer(encoded, np.uint8)
        if out.size % 2:
            raise FormatError(f"{what}: BF16 output of odd size {out.size}")
        n, nbits, E, R = self._parse(buf, out.size // 2, what)
        args = self._small_args if n < SMALL_CHUNK else self._decode_args
        if args is None:    # the kernel's table arguments, built once per codec (many chunks are small)
            if n < SMALL_CHUNK:
                dec = huffman.get_decoder(self.lengths, self.max_code_len, SMALL_LUT_BITS)
                args = self._small_args = (np.empty(0, np.uint64),) + dec.tables(np.empty(0, np.uint16))
            else:
                dec = self._decoder = huffman.get_decoder(self.lengths, self.max_code_len)
                args = self._decode_args = (packed_table(dec, self.mantissa_bits),) \
                    + dec.tables(np.empty(0, np.uint16))
        flags = out.flags
        v16 = out.view("<u2") if flags.c_contiguous and flags.aligned else np.empty(n, np.uint16)
        decode_chunk = _chunk_decoder(self.segments, n < SMALL_CHUNK, self.mantissa_bits)
        st = decode_chunk(buf, n, nbits, E, R, self.mantissa_bits, v16, *args)
        if st != huffman.OK:
            raise FormatError(f"{what} exponent stream is corrupt: {huffman._STATUS_TEXT.get(st, st)}")
        if v16.base is None:
            out[:] = v16.view(np.uint8)
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        k = self.mantissa_bits if self.mantissa_bits is not None else 0
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        n = d.size // 2
        v = d[: 2 * n].view("<u2").astype(np.int64)
        sym = (v >> (7 - k)) & ((1 << (8 + k)) - 1)
        rem = ((v >> 15) << (7 - k)) | (v & ((1 << (7 - k)) - 1))
        buf = np.frombuffer(encoded, np.uint8)
        try:
            _, nbits, E, R = self._parse(buf, n, "exponent chunk")
            spent_e, spent_r = 8 * (HEADER + E), 8 * R
        except FormatError:
            spent_e, spent_r = 8 * len(encoded), 0
        name = "exponent" if k == 0 else f"exponent+{k} mantissa bits"
        return [StreamStat(name, n, entropy_bits_of_counts(np.bincount(sym, minlength=256 << k)), spent_e),
                StreamStat("sign+mantissa", n, entropy_bits_of_counts(np.bincount(rem, minlength=1 << (8 - k))),
                           spent_r)]

    # -- GPU sync index ------------------------------------------------------------------
    @property
    def extra_section_types(self) -> tuple[int, ...]:
        return (GPU_SYNC_SECTION,) if self.gpu_sync else ()

    def extra_sections(self, chunks, decoded_sizes=None) -> dict[int, bytes]:
        if not self.gpu_sync:
            return {}
        n_values = None if decoded_sizes is None else [n // 2 for n in decoded_sizes]
        return {GPU_SYNC_SECTION: build_gpu_sync(self, chunks, n_values)}


def build_gpu_sync(codec: Exponent, chunks, n_values: list[int] | None = None) -> bytes:
    """The GPU_SYNC section for a frame's chunks (payloads as `encode` returned them).

    An entry of `chunks` that is None stands for a chunk the container stored raw; its number of
    values must then be given in `n_values` (same index). Pure function of the payloads and table.
    """
    codec._need_table()
    bpt, tpb = codec.bytes_per_thread, codec.threads_per_block
    dec = huffman.get_decoder(codec.lengths, codec.max_code_len)
    lengths = codec.lengths
    chunk_rows = []
    block_rows = []
    gaps_all = []
    first_value = 0
    nblocks_total = 0
    for ci, ch in enumerate(chunks):
        if ch is None:
            if n_values is None:
                raise ValueError("raw chunks need n_values")
            n = int(n_values[ci])
            chunk_rows.append(struct.pack("<QIIIIII", first_value, n, 0, 0, 0, nblocks_total, 0))
            first_value += n
            continue
        buf = np.frombuffer(ch, np.uint8)
        n, nbits, E, R = codec._parse(buf, None, f"exponent chunk {ci}")
        syms = np.empty(n, dec.sym_dtype)
        if n:
            dec.decode(buf[HEADER:HEADER + E], nbits, n, syms, f"exponent chunk {ci}")
        nwin = max(1, (nbits + 8 * bpt - 1) // (8 * bpt))
        nblk = (nwin + tpb - 1) // tpb
        gaps = np.empty(nblk * tpb, np.uint8)
        bfw = np.empty(nblk, np.int64)
        bos = np.empty(nblk, np.int64)
        _code_starts_sync(syms, lengths, nbits, bpt, tpb, gaps, bfw, bos)
        chunk_rows.append(struct.pack("<QIIIIII", first_value, n, nbits, HEADER, HEADER + E,
                                      nblocks_total, nblk))
        for b in range(nblk):
            block_rows.append(struct.pack("<IIQ", ci, int(bfw[b]), int(bos[b])))
        gaps_all.append(gaps.tobytes())
        nblocks_total += nblk
        first_value += n
    head = struct.pack("<4sHHIIII", b"GSY1", bpt, tpb, len(chunk_rows), nblocks_total,
                       codec.mantissa_bits, 0)
    return head + b"".join(chunk_rows) + b"".join(block_rows) + b"".join(gaps_all)


def parse_gpu_sync(section: bytes) -> dict:
    """Parse a GPU_SYNC section into numpy arrays (for the GPU launcher and tests)."""
    buf = memoryview(section)
    if len(buf) < 24:
        raise FormatError("GPU sync section shorter than its 24-byte header")
    magic, bpt, tpb, nchunks, nblocks, k, res = struct.unpack_from("<4sHHIIII", buf, 0)
    if magic != b"GSY1" or res != 0:
        raise FormatError(f"GPU sync section: bad magic {magic!r} or reserved field {res}")
    need = 24 + 32 * nchunks + 16 * nblocks + tpb * nblocks
    if len(buf) != need:
        raise FormatError(f"GPU sync section is {len(buf)} bytes, its header implies {need}")
    ct = np.frombuffer(buf, np.dtype([("first_value", "<u8"), ("n_values", "<u4"), ("exp_bits", "<u4"),
                                      ("exp_offset", "<u4"), ("rem_offset", "<u4"),
                                      ("first_block", "<u4"), ("n_blocks", "<u4")]),
                       count=nchunks, offset=24)
    bt = np.frombuffer(buf, np.dtype([("chunk", "<u4"), ("first_window", "<u4"), ("out_start", "<u8")]),
                       count=nblocks, offset=24 + 32 * nchunks)
    gaps = np.frombuffer(buf, np.uint8, count=tpb * nblocks, offset=24 + 32 * nchunks + 16 * nblocks)
    return {"bytes_per_thread": bpt, "threads_per_block": tpb, "mantissa_bits": k,
            "chunks": ct, "blocks": bt, "gaps": gaps.reshape(nblocks, tpb)}
