"""Canonical, length-limited Huffman coding of symbol streams (bytes or up to 16-bit symbols), in numba.

Bitstream (normative; `codec/_reference.py` mirrors it in plain numpy):
- Codes are written MSB-first: the first symbol's code occupies the most significant bits of
  byte 0, and so on. The last byte is padded with zero bits; callers may append more zero bytes.
- Code construction is deterministic. Lengths: a Huffman tree built with the two-queue method over
  the used symbols sorted by (count, symbol) (ties: leaves before merged nodes, earlier before
  later), then limited to `max_len` by clamping and repairing the Kraft sum in a fixed order (see
  `_limit_lengths`). A stream with a single used symbol gives it length 1.
- Canonical codes: symbols sorted by (length, symbol value) get consecutive codes; the first code of
  length l+1 is (last code of length l + 1) << 1. This is the DEFLATE convention.
- Valid length tables satisfy Kraft's inequality sum 2^-l <= 1 and every length <= max_len <= 32;
  an incomplete code (sum < 1, e.g. one symbol) is allowed, and bit patterns that match no code are
  a decode error.

Decoding is table-driven: a `LUT_BITS`-bit lookup (8..12 bits per table) resolves up to 4 whole codes
at once and writes them with one unaligned store; the reader is a bit position, and each lookup does
one unaligned big-endian 8-byte load (no refill branch). A stream may be split into segments at
known code boundaries (bit offset + symbol index); `Decoder.decode_segments` then decodes 4 segments
interleaved (huff0 style), which hides the latency of the lookup chain. The fast loops run a
precomputed number of lookups for which every load stays inside the stream and every store inside
the segment's own outputs; the rest is decoded with bounds-checked loads, and every segment must
end exactly at the next one's first bit. The hot decoders (Huffman blocks, the exponent codec) use
packed tables instead: one 8-byte entry per lookup holding symbols, bits used and count (one table
load, not two), and readers that load 8 bytes once per 4 lookups and shift the bits out of a
register (see `_make_packed_kernel`), 4 or 6 of them interleaved: the latency of the lookup
chain bounds one reader, and 6 hide more of it than 4 (the `segments` of the codecs' streams).
Every step consumes at least one bit and emits at least one symbol, so decoding is bounded by
the output size. Kernels report an error status instead of reading or writing out of bounds; the
Python wrappers raise `FormatError`. All kernels are `nogil` so chunks decode in parallel
threads.
"""
from __future__ import annotations

import threading

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, register_jitable

from ..errors import FormatError

MAX_CODE_LEN = 32
LUT_BITS = 12
LUT_SYMS = 4

# decode status codes
OK = 0
ERR_EXHAUSTED = 1      # ran past the end of the stream's bytes
ERR_BAD_CODE = 2       # a bit pattern that matches no code
ERR_LENGTH = 3         # decoded all symbols but consumed a different number of bits than declared
ERR_SEGMENTS = 4       # the segment table is inconsistent

_STATUS_TEXT = {
    ERR_EXHAUSTED: "bitstream ends before all symbols are decoded",
    ERR_BAD_CODE: "bit pattern matches no Huffman code",
    ERR_LENGTH: "bit count differs from the declared length",
    ERR_SEGMENTS: "segment table is inconsistent (offsets decrease or lie past the stream)",
}


# ---------------------------------------------------------------------------------------------
# code construction
# ---------------------------------------------------------------------------------------------
@nb.njit(nogil=True, cache=True)
def _stable_order(keys):
    """Indices that sort keys ascending, ties in index order (as np.argsort(kind="mergesort")): a
    bottom-up merge sort written out, since numba's argsort implementations took about 4 s of a
    first run's compiling."""
    n = keys.shape[0]
    a = np.empty(n, np.int64)
    b = np.empty(n, np.int64)
    for i in range(n):
        a[i] = i
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if i < mid and (j >= hi or keys[a[i]] <= keys[a[j]]):
                    b[k] = a[i]
                    i += 1
                else:
                    b[k] = a[j]
                    j += 1
        a, b = b, a
        width *= 2
    return a


@nb.njit(nogil=True, cache=True)
def _huffman_lengths(counts):
    """Unlimited Huffman code lengths; deterministic (two-queue method, stable order)."""
    n = counts.shape[0]
    lengths = np.zeros(n, np.int64)
    used = 0
    for i in range(n):
        if counts[i] > 0:
            used += 1
    if used == 0:
        return lengths
    syms = np.empty(used, np.int64)
    j = 0
    for i in range(n):
        if counts[i] > 0:
            syms[j] = i
            j += 1
    if used == 1:
        lengths[syms[0]] = 1
        return lengths
    # stable sort by count (syms are ascending, so ties keep symbol order)
    cnt = np.empty(used, np.int64)
    for i in range(used):
        cnt[i] = counts[syms[i]]
    order = _stable_order(cnt)
    leaf_w = np.empty(used, np.int64)
    leaf_s = np.empty(used, np.int64)
    for i in range(used):
        leaf_w[i] = cnt[order[i]]
        leaf_s[i] = syms[order[i]]
    # nodes: 0..used-1 leaves, used.. internal
    total = 2 * used - 1
    parent = np.empty(total, np.int64)
    parent[total - 1] = -1      # the root; every other node gets its parent below
    node_w = np.empty(used - 1, np.int64)
    li = 0
    ni = 0   # next internal node to consume
    nn = 0   # internal nodes created
    for k in range(used - 1):
        wsum = 0
        for t in range(2):     # the two lightest of the leaf and node queues (leaves win ties)
            if li < used and (ni >= nn or leaf_w[li] <= node_w[ni]):
                parent[li] = used + nn
                wsum += leaf_w[li]
                li += 1
            else:
                parent[used + ni] = used + nn
                wsum += node_w[ni]
                ni += 1
        node_w[nn] = wsum
        nn += 1
    depth = np.zeros(total, np.int64)
    for v in range(total - 2, -1, -1):
        depth[v] = depth[parent[v]] + 1
    for i in range(used):
        lengths[leaf_s[i]] = depth[i]
    return lengths


@nb.njit(nogil=True, cache=True)
def _limit_lengths(counts, lengths, max_len):
    """Clamp lengths to max_len and repair Kraft's inequality; deterministic."""
    n = lengths.shape[0]
    out = lengths.copy()
    over = False
    for i in range(n):
        if out[i] > max_len:
            out[i] = max_len
            over = True
    if not over:
        return out
    one = np.int64(1) << max_len
    kraft = np.int64(0)
    for i in range(n):
        if out[i] > 0:
            kraft += np.int64(1) << (max_len - out[i])
    # symbols in order of increasing count then symbol: lengthen the rarest first
    used = 0
    for i in range(n):
        if out[i] > 0:
            used += 1
    syms = np.empty(used, np.int64)
    c = np.empty(used, np.int64)
    j = 0
    for i in range(n):
        if out[i] > 0:
            syms[j] = i
            c[j] = counts[i]
            j += 1
    order = _stable_order(c)
    while kraft > one:
        # lengthen the longest code shorter than max_len (rarest first among those)
        best = -1
        bestlen = 0
        for t in range(used):
            s = syms[order[t]]
            if out[s] < max_len and out[s] > bestlen:
                bestlen = out[s]
                best = s
        out[best] += 1
        kraft -= np.int64(1) << (max_len - out[best])
    # use up slack: shorten the most frequent codes while the code stays valid
    changed = True
    while changed:
        changed = False
        for t in range(used - 1, -1, -1):
            s = syms[order[t]]
            if out[s] > 1:
                gain = np.int64(1) << (max_len - out[s])
                if kraft + gain <= one:
                    out[s] -= 1
                    kraft += gain
                    changed = True
    return out


def code_lengths(counts, max_len: int = 15) -> np.ndarray:
    """Deterministic length-limited Huffman code lengths (uint8) for symbol counts."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be in [1, {MAX_CODE_LEN}], got {max_len}")
    used = int(np.count_nonzero(counts))
    if used > (1 << max_len):
        raise ValueError(f"{used} symbols cannot be coded with codes of at most {max_len} bits")
    lens = _limit_lengths(counts, _huffman_lengths(counts), max_len)
    return lens.astype(np.uint8)


@nb.njit(nogil=True, cache=True)
def _length_stats(lengths):
    """(min, max, Kraft sum scaled by 2^MAX_CODE_LEN) of uint8 code lengths (0 = unused)."""
    lo = np.int64(255)
    hi = np.int64(0)
    kraft = np.int64(0)
    for i in range(lengths.shape[0]):
        ln = np.int64(lengths[i])
        lo = min(lo, ln)
        hi = max(hi, ln)
        if 0 < ln <= MAX_CODE_LEN:
            kraft += np.int64(1) << (MAX_CODE_LEN - ln)
    return lo, hi, kraft


def validate_lengths(lengths, max_len: int, what: str = "Huffman table") -> np.ndarray:
    """Check a code-length table (Kraft sum <= 1, lengths <= max_len); return it as uint8."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or lengths.size > 65536:
        raise FormatError(f"{what}: expected 1..65536 code lengths, got shape {lengths.shape}")
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise FormatError(f"{what}: max code length {max_len} outside [1, {MAX_CODE_LEN}]")
    if lengths.dtype != np.uint8:
        if lengths.min() < 0 or lengths.max() > max_len:
            raise FormatError(f"{what}: code lengths must lie in [0, {max_len}], got "
                              f"[{int(lengths.min())}, {int(lengths.max())}]")
        lengths = lengths.astype(np.uint8)
    lo, hi, kraft = _length_stats(np.ascontiguousarray(lengths))
    if hi > max_len:
        raise FormatError(f"{what}: code lengths must lie in [0, {max_len}], got [{lo}, {hi}]")
    if kraft > (1 << MAX_CODE_LEN):
        raise FormatError(f"{what}: code lengths do not form a prefix code (Kraft sum "
                          f"{kraft / (1 << MAX_CODE_LEN):.6f} > 1)")
    return lengths


@nb.njit(nogil=True, cache=True)
def _canonical_codes(lengths):
    n = lengths.shape[0]
    codes = np.zeros(n, np.uint32)
    bl_count = np.zeros(MAX_CODE_LEN + 1, np.int64)
    for i in range(n):
        bl_count[lengths[i]] += 1
    bl_count[0] = 0
    next_code = np.zeros(MAX_CODE_LEN + 2, np.int64)
    code = 0
    for b in range(1, MAX_CODE_LEN + 1):
        code = (code + bl_count[b - 1]) << 1
        next_code[b] = code
    for i in range(n):
        ln = lengths[i]
        if ln > 0:
            codes[i] = np.uint32(next_code[ln])
            next_code[ln] += 1
    return codes


def canonical_codes(lengths) -> np.ndarray:
    return _canonical_codes(np.ascontiguousarray(lengths, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------
@nb.njit(nogil=True, cache=True)
def _count_bits(symbols, lengths):
    """Total bits of the coded stream, or -1 - index of the first symbol without a code."""
    total = np.int64(0)
    nsym = lengths.shape[0]
    for i in range(symbols.shape[0]):
        s = np.int64(symbols[i])
        if s >= nsym or lengths[s] == 0:
            return -1 - i
        total += lengths[s]
    return total


@nb.njit(nogil=True, cache=True)
def _encode_into(symbols, lengths, codes, dst, start):
    """Write the codes of `symbols` MSB-first into dst[start:]; dst must be large enough."""
    acc = np.uint64(0)
    nacc = np.int64(0)
    p = start
    for i in range(symbols.shape[0]):
        s = symbols[i]
        ln = np.int64(lengths[s])
        acc = (acc << np.uint64(ln)) | np.uint64(codes[s])
        nacc += ln
        if nacc >= 32:
            nacc -= 32
            w = acc >> np.uint64(nacc)
            dst[p] = np.uint8((w >> np.uint64(24)) & np.uint64(255))
            dst[p + 1] = np.uint8((w >> np.uint64(16)) & np.uint64(255))
            dst[p + 2] = np.uint8((w >> np.uint64(8)) & np.uint64(255))
            dst[p + 3] = np.uint8(w & np.uint64(255))
            p += 4
    while nacc > 0:
        if nacc >= 8:
            nacc -= 8
            dst[p] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
        else:
            dst[p] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(255))
            nacc = 0
        p += 1
    return p


def encode(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray | None = None,
           pad: int = 0) -> tuple[np.ndarray, int]:
    """Huffman-code `symbols` (uint8 or uint16) -> (uint8 array of ceil(bits/8)+pad bytes, bits)."""
    lengths = np.ascontiguousarray(lengths, dtype=np.uint8)
    if codes is None:
        codes = _canonical_codes(lengths)
    symbols = np.ascontiguousarray(symbols).reshape(-1)
    nbits = int(_count_bits(symbols, lengths))
    if nbits < 0:
        i = -1 - nbits
        raise ValueError(f"symbol {int(symbols[i])} at index {i} has no code in this table "
                         "(fit the codec on the data it encodes)")
    dst = np.zeros((nbits + 7) // 8 + pad, np.uint8)
    _encode_into(symbols, lengths, codes, dst, 0)
    return dst, nbits


# ---------------------------------------------------------------------------------------------
# decoding tables
# ---------------------------------------------------------------------------------------------
# lut_sym[i]: the up to LUT_SYMS symbols whose whole codes the LUT_BITS-bit prefix i resolves, packed
# as consecutive output elements (16-bit fields; 8-bit fields in lut_sym8 for byte alphabets) so one
# unaligned store writes all four; lut_info[i] = bits they use | count << 8 | length of the first
# code alone << 12 (0: the first code is longer than the table's bits or matches nothing: slow
# path). LUT_BITS is the default table size; Decoder takes 8..12 (the kernels read it from the size).


@intrinsic
def _load_be64(typingctx, arr, idx):
    """Unaligned big-endian 64-bit load of arr[idx:idx + 8] (uint8 array; no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [i]), ir.IntType(64).as_pointer())
        v = builder.load(ptr, align=1)
        bswap = builder.module.declare_intrinsic("llvm.bswap", [ir.IntType(64)])
        return builder.call(bswap, [v])
    return types.uint64(arr, idx), codegen


@intrinsic
def _store_be64(typingctx, arr, idx, val):
    """Unaligned big-endian 64-bit store of val (uint64) to arr[idx:idx + 8] (uint8; no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        v = context.cast(builder, args[2], signature.args[2], types.uint64)
        bswap = builder.module.declare_intrinsic("llvm.bswap", [ir.IntType(64)])
        ptr = builder.bitcast(builder.gep(ary.data, [i]), ir.IntType(64).as_pointer())
        builder.store(builder.call(bswap, [v]), ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


@intrinsic
def _store4(typingctx, arr, idx, val):
    """Unaligned store of the low 4 * itemsize bytes of val (uint64) to arr[idx:idx + 4]."""
    if not (isinstance(arr, types.Array) and arr.dtype in (types.uint8, types.uint16)
            and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        width = aryty.dtype.bitwidth * 4
        v = context.cast(builder, args[2], signature.args[2], types.uint64)
        if width < 64:
            v = builder.trunc(v, ir.IntType(width))
        ptr = builder.bitcast(builder.gep(ary.data, [i]), ir.IntType(width).as_pointer())
        builder.store(v, ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


# Raw addresses for the packed kernels' hot loops: a pointer per reader and per output instead of
# base + index keeps all 4 readers in registers (x86-64 has 15 to spare). The kernels bound every
# access before the loop, as with the indexed loads.
@intrinsic
def _addr(typingctx, arr):
    """Address of arr's first element (uintp)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))
    return types.uint64(arr), codegen


@intrinsic
def _load_be64_at(typingctx, addr):
    """Unaligned big-endian 64-bit load at a raw address (no bounds check)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        v = builder.load(ptr, align=1)
        bswap = builder.module.declare_intrinsic("llvm.bswap", [ir.IntType(64)])
        return builder.call(bswap, [v])
    return types.uint64(addr), codegen


@intrinsic
def _ctz64(typingctx, x):
    """Trailing zero bits of a nonzero uint64."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.uint64)
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64), ir.IntType(1)])
        f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.cttz.i64")
        return builder.call(f, [v, ir.Constant(ir.IntType(1), 1)])
    return types.uint64(x), codegen


@intrinsic
def _prefetch(typingctx, addr):
    """Prefetch the cache line at a raw address into all cache levels (a hint: never faults)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                           "llvm.prefetch.p0i8")
        builder.call(f, [builder.inttoptr(args[0], i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                         ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(addr), codegen


@nb.njit(nogil=True, cache=True)
def _canonical_tables(lengths, sorted_syms, first_code, first_index, len_count):
    """The canonical slow-path tables: symbols sorted by (length, value), and per length the first
    code, its index in sorted_syms and the count."""
    n = lengths.shape[0]
    for ln in range(MAX_CODE_LEN + 1):
        len_count[ln] = 0
    for i in range(n):
        len_count[lengths[i]] += 1
    len_count[0] = 0
    idx = 0
    code = 0
    for ln in range(1, MAX_CODE_LEN + 1):
        code = (code + len_count[ln - 1]) << 1
        first_code[ln] = code
        first_index[ln] = idx
        idx += len_count[ln]
    nxt = first_index.copy()      # symbols by (length, value): a counting sort
    for sym in range(n):
        ln = lengths[sym]
        if ln > 0:
            sorted_syms[nxt[ln]] = sym
            nxt[ln] += 1


@nb.njit(nogil=True, cache=True)
def _fill(a, lo, hi, v):
    for q in range(lo, hi):     # most ranges are a few entries: a loop beats a slice assignment
        a[q] = v


@nb.njit(nogil=True, cache=True, inline="always")     # inlined: each caller's layout is a constant
def _build_packed_ranges(lengths, lut_bits, first_code, first_index, len_count, sorted_syms, packed,
                         wide, shift):
    """_build_decoder + _build_packed8 (wide=False) or _build_packed16 (wide=True, symbols << shift)
    in one pass over the code sequences instead of the entries (the same tables, checked by a
    test; byte alphabets; needs the canonical tables).

    Canonical codes of length <= r, left-aligned to r bits, cover exactly [0, K[r]) of the r-bit
    patterns, so a node that has decoded k codes with r bits left owns a range of 2^r entries:
    its fitting codes each own a sub-range (children), and the rest [K[r], 2^r) gets the node's
    own entry. Walking up to 4 levels of codes fills every entry once, as contiguous ranges; the
    per-entry build walks up to 4 dependent codes for every entry, and a bytegroup chunk builds a
    table for each of its Huffman planes.
    """
    B = lut_bits
    K = np.zeros(B + 1, np.int64)       # patterns covered by codes of length <= r
    fit = np.zeros(B + 1, np.int64)     # codes of length <= r (a prefix of sorted_syms)
    for r in range(1, B + 1):
        K[r] = 2 * K[r - 1] + len_count[r]
        fit[r] = fit[r - 1] + len_count[r]
    m = fit[B]
    cl = np.empty(m, np.int64)          # length, left-aligned code, symbol of each fitting code
    cc = np.empty(m, np.int64)
    cs = np.empty(m, np.uint64)
    # the layouts (see _build_packed8 / _build_packed16): lanes of 8 bits from bit 32 on, or of
    # 16 bits from bit 0 on; the count (x 2 for 16-bit lanes: bytes written) and the first code's
    # length at their fields
    lane = np.uint64(16 if wide else 8)
    base = np.uint64(0 if wide else 32)
    one = np.uint64(2 << 16) if wide else np.uint64(1 << 8)
    hpos = 32 if wide else 12
    t = 0
    for ln in range(1, B + 1):
        for j in range(len_count[ln]):
            cl[t] = ln
            cc[t] = first_code[ln] + j
            cs[t] = np.uint64(sorted_syms[first_index[ln] + j]) << np.uint64(shift)
            t += 1
    _fill(packed, K[B], 1 << B, np.uint64(0))    # the first code is longer than the table: slow path
    for i1 in range(fit[B]):
        l1 = cl[i1]
        r1 = B - l1
        b1 = cc[i1] << r1
        s1 = cs[i1]
        head = np.uint64(l1) << np.uint64(hpos)     # the first code's length
        _fill(packed, b1 + K[r1], b1 + (1 << r1), (s1 << base) | np.uint64(l1) | one | head)
        for i2 in range(fit[r1]):
            l2 = cl[i2]
            r2 = r1 - l2
            b2 = b1 + (cc[i2] << r2)
            s2 = s1 | (cs[i2] << lane)
            _fill(packed, b2 + K[r2], b2 + (1 << r2), (s2 << base) | np.uint64(l1 + l2) | (2 * one) | head)
            for i3 in range(fit[r2]):
                l3 = cl[i3]
                r3 = r2 - l3
                b3 = b2 + (cc[i3] << r3)
                s3 = s2 | (cs[i3] << (2 * lane))
                u3 = l1 + l2 + l3
                _fill(packed, b3 + K[r3], b3 + (1 << r3), (s3 << base) | np.uint64(u3) | (3 * one) | head)
                for i4 in range(fit[r3]):
                    l4 = cl[i4]
                    r4 = r3 - l4
                    b4 = b3 + (cc[i4] << r4)
                    s4 = s3 | (cs[i4] << (3 * lane))
                    _fill(packed, b4, b4 + (1 << r4), (s4 << base) | np.uint64(u3 + l4) | (4 * one) | head)


@nb.njit(nogil=True, cache=True)
def _build_decoder(lengths, lut_bits, lut_sym, lut_sym8, lut_info, sorted_syms, first_code,
                   first_index, len_count):
    """Fill the multi-symbol lookup tables (see above) and the canonical slow-path tables."""
    n = lengths.shape[0]
    codes = _canonical_codes(lengths)
    _canonical_tables(lengths, sorted_syms, first_code, first_index, len_count)
    size = 1 << lut_bits
    one_sym = np.zeros(size, np.int64)
    one_len = np.zeros(size, np.int64)
    for s in range(n):
        ln = np.int64(lengths[s])
        if ln > 0 and ln <= lut_bits:
            base = np.int64(codes[s]) << (lut_bits - ln)
            for j in range(np.int64(1) << (lut_bits - ln)):
                one_sym[base + j] = s
                one_len[base + j] = ln
    mask = size - 1
    for i in range(size):
        used = 0
        nsym = 0
        e16 = np.uint64(0)
        e8 = np.uint64(0)
        while nsym < LUT_SYMS:
            rem = lut_bits - used
            if rem <= 0:
                break
            j = (i << used) & mask     # the next code starts at bit `used`; zero fill below
            ln = one_len[j]
            if ln == 0 or ln > rem:
                break
            e16 |= np.uint64(one_sym[j] & 0xFFFF) << np.uint64(16 * nsym)
            e8 |= np.uint64(one_sym[j] & 0xFF) << np.uint64(8 * nsym)
            used += ln
            nsym += 1
        lut_sym[i] = e16
        lut_sym8[i] = e8
        lut_info[i] = np.uint16(used | (nsym << 8) | (one_len[i] << 12))


class Decoder:
    """Decoding tables for one code-length table (cached per table, thread-safe to share)."""

    def __init__(self, lengths: np.ndarray, max_len: int, lut_bits: int = LUT_BITS):
        if not 8 <= lut_bits <= 12:
            raise ValueError(f"lut_bits must be in [8, 12], got {lut_bits}")
        self.lengths = validate_lengths(lengths, max_len)
        self.max_len = max_len
        self.lut_bits = lut_bits
        n = self.lengths.size
        self.sym_dtype = np.uint8 if n <= 256 else np.uint16
        self.lut_sym = np.zeros(1 << lut_bits, np.uint64)
        self.lut_sym8 = np.zeros(1 << lut_bits, np.uint64)
        self.lut_info = np.zeros(1 << lut_bits, np.uint16)
        self.sorted_syms = np.zeros(n, np.int64)
        self.first_code = np.zeros(MAX_CODE_LEN + 1, np.int64)
        self.first_index = np.zeros(MAX_CODE_LEN + 1, np.int64)
        self.len_count = np.zeros(MAX_CODE_LEN + 1, np.int64)
        self.extra: dict = {}     # derived tables (exponent.packed_table), built on first use
        _build_decoder(self.lengths, lut_bits, self.lut_sym, self.lut_sym8, self.lut_info,
                       self.sorted_syms, self.first_code, self.first_index, self.len_count)

    def tables(self, out: np.ndarray):
        """The kernel arguments after `out` for decoding into out's dtype (uint8 or uint16)."""
        if out.dtype == np.uint8:
            if self.lengths.size > 256:
                raise ValueError("a uint8 output cannot hold this alphabet")
            return self.lut_sym8, self.lut_info, self.sorted_syms, self.first_code, self.first_index, \
                self.len_count, self.max_len
        if out.dtype != np.uint16:
            raise ValueError("out must be uint8 or uint16")
        return self.lut_sym, self.lut_info, self.sorted_syms, self.first_code, self.first_index, \
            self.len_count, self.max_len

    def decode_segments(self, stream: np.ndarray, seg_bits: np.ndarray, seg_out: np.ndarray,
                        out: np.ndarray, what: str = "Huffman stream") -> np.ndarray:
        """Decode S independent segments of one bitstream, interleaved (huff0 style).

        Segment j holds the codes of out[seg_out[j]:seg_out[j+1]] in bits
        [seg_bits[j], seg_bits[j+1]) of `stream`; both arrays (int64, S+1 entries) must start at 0
        and be non-decreasing, seg_bits ending at the total bit count and seg_out at out.size
        (checked: FormatError otherwise).
        """
        st = _decode_segments(stream, seg_bits, seg_out, out, *self.tables(out))
        if st != OK:
            raise FormatError(f"{what} is corrupt: {_STATUS_TEXT.get(st, st)}")
        return out

    def decode(self, stream: np.ndarray, nbits: int, n: int, out: np.ndarray | None = None,
               what: str = "Huffman stream") -> np.ndarray:
        """Decode exactly n symbols that occupy exactly nbits bits of `stream`.

        `stream` may be longer than ceil(nbits/8) (padding); the decoder never reads past its end.
        """
        if out is None:
            out = np.empty(n, self.sym_dtype)
        if out.shape[0] != n:
            raise ValueError("out has the wrong size")
        if nbits < 0 or nbits > 8 * stream.shape[0]:
            raise FormatError(f"{what}: declares {nbits} bits but holds {8 * stream.shape[0]}")
        return self.decode_segments(stream, np.array([0, nbits], np.int64), np.array([0, n], np.int64),
                                    out, what)


_cache_lock = threading.Lock()
_decoder_cache: dict[tuple[bytes, int, int], Decoder] = {}


def get_decoder(lengths: np.ndarray, max_len: int, lut_bits: int = LUT_BITS) -> Decoder:
    key = (np.ascontiguousarray(lengths, dtype=np.uint8).tobytes(), max_len, lut_bits)
    d = _decoder_cache.get(key)
    if d is None:
        d = Decoder(lengths, max_len, lut_bits)
        with _cache_lock:
            if len(_decoder_cache) > 256:
                _decoder_cache.clear()
            _decoder_cache[key] = d
    return d


# ---------------------------------------------------------------------------------------------
# decoding kernels
# ---------------------------------------------------------------------------------------------
# A reader is a bit position `pos`; each lookup loads the 8 bytes at pos >> 3 (one unaligned
# big-endian load, no refill branch) and shifts out pos & 7 bits, which leaves >= 57 valid bits:
# enough for the LUT and for any code (<= 32 bits). The fast loops run a precomputed number of
# lookups for which every load stays inside the stream (a lookup advances <= 32 bits) and every
# 4-symbol store stays inside the segment's own outputs (a lookup writes <= 4).
@nb.njit(nogil=True, cache=True)
def _log2(size):
    b = 0
    while (1 << b) < size:
        b += 1
    return b


@nb.njit(nogil=True, cache=True)
def _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, max_len, lut_bits):
    """Canonical decode of one code longer than the LUT; returns (symbol, length) or (0, 0)."""
    for ln in range(lut_bits + 1, max_len + 1):
        c = np.int64(buf >> np.uint64(64 - ln))
        off = c - first_code[ln]
        if off >= 0 and off < len_count[ln]:
            return sorted_syms[first_index[ln] + off], np.int64(ln)
    return np.int64(0), np.int64(0)


@nb.njit(nogil=True, cache=True)
def _slow_step(src, pos, o, out, sorted_syms, first_code, first_index, len_count, max_len, lut_bits):
    """One canonical decode at bit pos (the caller guarantees an 8-byte load there is in bounds
    and out[o] is the segment's); returns (pos, o, status)."""
    buf = _load_be64(src, pos >> 3) << np.uint64(pos & 7)
    s, ln = _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, max_len, lut_bits)
    if ln == 0:
        return pos, o, ERR_BAD_CODE
    out[o] = s
    return pos + ln, o + 1, OK


@nb.njit(nogil=True, cache=True)
def _window(src, pos):
    """The 64 stream bits from bit pos on (MSB-first), zero past the end of src (bounds-checked)."""
    q = pos >> 3
    nbytes = src.shape[0]
    if q + 8 <= nbytes:
        buf = _load_be64(src, q)
    else:
        buf = np.uint64(0)
        for t in range(8):
            if q + t < nbytes:
                buf |= np.uint64(src[q + t]) << np.uint64(56 - 8 * t)
    return buf << np.uint64(pos & 7)


@nb.njit(nogil=True, cache=True)
def _seg_finish(src, pos0, o0, end, end_bit, out, lut_sym, lut_info, sorted_syms, first_code,
                first_index, len_count, max_len):
    """Decode one segment's outputs [o, end) from bit pos0 on; its codes must end at end_bit."""
    nbytes = src.shape[0]
    lut_bits = _log2(lut_info.shape[0])
    lut_shift = np.uint64(64 - lut_bits)
    lim = 8 * (nbytes - 8)       # a full 8-byte load at pos >> 3 needs pos <= lim
    while True:
        safe = min((end - o0) >> 2, (lim - pos0) >> 5)
        if safe <= 0:
            break
        slow = -1
        for _ in range(safe):
            q = pos0 >> 3
            buf = _load_be64(src, q) << np.uint64(pos0 & 7)
            idx = buf >> lut_shift
            info = np.int64(lut_info[idx])
            nsym = (info >> 8) & 15
            if nsym == 0:
                slow = 0
                break
            _store4(out, o0, lut_sym[idx])
            pos0 += info & 255
            o0 += nsym
        if slow >= 0:
            pos0, o0, st = _slow_step(src, pos0, o0, out, sorted_syms, first_code, first_index,
                                      len_count, max_len, lut_bits)
            if st != OK:
                return st
    pos = pos0
    o = o0
    while o < end:
        buf = _window(src, pos)
        info = np.int64(lut_info[buf >> lut_shift])
        len1 = info >> 12
        if len1 > 0:
            out[o] = lut_sym[buf >> lut_shift] & np.uint64(0xFFFF)
            pos += len1
        else:
            s, ln = _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, max_len, lut_bits)
            if ln == 0:
                return ERR_BAD_CODE
            out[o] = s
            pos += ln
        o += 1
        if pos > 8 * nbytes:
            return ERR_EXHAUSTED
    if pos != end_bit:
        return ERR_LENGTH
    return OK


@nb.njit(nogil=True, cache=True)
def _decode_segments(src, seg_bits, seg_out, out, lut_sym, lut_info, sorted_syms, first_code,
                     first_index, len_count, max_len):
    """Decode the segments of one stream (see Decoder.decode_segments); returns a status.

    Segments run 4 at a time, interleaved, while each of them has the room of a fast lookup;
    then each finishes alone with bounds-checked loads and must end exactly at its end bit.
    """
    nbytes = src.shape[0]
    S = seg_bits.shape[0] - 1
    if S < 1 or seg_out.shape[0] != S + 1 or seg_bits[0] != 0 or seg_out[0] != 0 \
            or seg_out[S] != out.shape[0] or seg_bits[S] > 8 * nbytes:
        return ERR_SEGMENTS
    for j in range(S):
        if seg_bits[j + 1] < seg_bits[j] or seg_out[j + 1] < seg_out[j]:
            return ERR_SEGMENTS
    lim = 8 * (nbytes - 8)
    lut_bits = _log2(lut_info.shape[0])
    lut_shift = np.uint64(64 - lut_bits)
    j0 = 0
    while j0 < S:
        if S - j0 >= 4:
            pos0 = seg_bits[j0]
            pos1 = seg_bits[j0 + 1]
            pos2 = seg_bits[j0 + 2]
            pos3 = seg_bits[j0 + 3]
            o0 = seg_out[j0]
            o1 = seg_out[j0 + 1]
            o2 = seg_out[j0 + 2]
            o3 = seg_out[j0 + 3]
            e0 = seg_out[j0 + 1]
            e1 = seg_out[j0 + 2]
            e2 = seg_out[j0 + 3]
            e3 = seg_out[j0 + 4]
            while True:
                safe = min(min((e0 - o0) >> 2, (e1 - o1) >> 2), min((e2 - o2) >> 2, (e3 - o3) >> 2))
                safe = min(safe, (lim - max(max(pos0, pos1), max(pos2, pos3))) >> 5)
                if safe <= 0:
                    break
                slow = -1
                for _ in range(safe):
                    q = pos0 >> 3
                    buf = _load_be64(src, q) << np.uint64(pos0 & 7)
                    idx = buf >> lut_shift
                    info = np.int64(lut_info[idx])
                    nsym = (info >> 8) & 15
                    if nsym == 0:
                        slow = 0
                        break
                    _store4(out, o0, lut_sym[idx])
                    pos0 += info & 255
                    o0 += nsym
                    q = pos1 >> 3
                    buf = _load_be64(src, q) << np.uint64(pos1 & 7)
                    idx = buf >> lut_shift
                    info = np.int64(lut_info[idx])
                    nsym = (info >> 8) & 15
                    if nsym == 0:
                        slow = 1
                        break
                    _store4(out, o1, lut_sym[idx])
                    pos1 += info & 255
                    o1 += nsym
                    q = pos2 >> 3
                    buf = _load_be64(src, q) << np.uint64(pos2 & 7)
                    idx = buf >> lut_shift
                    info = np.int64(lut_info[idx])
                    nsym = (info >> 8) & 15
                    if nsym == 0:
                        slow = 2
                        break
                    _store4(out, o2, lut_sym[idx])
                    pos2 += info & 255
                    o2 += nsym
                    q = pos3 >> 3
                    buf = _load_be64(src, q) << np.uint64(pos3 & 7)
                    idx = buf >> lut_shift
                    info = np.int64(lut_info[idx])
                    nsym = (info >> 8) & 15
                    if nsym == 0:
                        slow = 3
                        break
                    _store4(out, o3, lut_sym[idx])
                    pos3 += info & 255
                    o3 += nsym
                # a code longer than the table (rare): one canonical step outside the hot loop,
                # which keeps calls (and the register spills they force) out of it
                if slow == 0:
                    pos0, o0, st = _slow_step(src, pos0, o0, out, sorted_syms, first_code, first_index,
                                              len_count, max_len, lut_bits)
                elif slow == 1:
                    pos1, o1, st = _slow_step(src, pos1, o1, out, sorted_syms, first_code, first_index,
                                              len_count, max_len, lut_bits)
                elif slow == 2:
                    pos2, o2, st = _slow_step(src, pos2, o2, out, sorted_syms, first_code, first_index,
                                              len_count, max_len, lut_bits)
                elif slow == 3:
                    pos3, o3, st = _slow_step(src, pos3, o3, out, sorted_syms, first_code, first_index,
                                              len_count, max_len, lut_bits)
                else:
                    st = OK
                if st != OK:
                    return st
            st = _seg_finish(src, pos0, o0, e0, seg_bits[j0 + 1], out, lut_sym, lut_info, sorted_syms,
                             first_code, first_index, len_count, max_len)
            if st == OK:
                st = _seg_finish(src, pos1, o1, e1, seg_bits[j0 + 2], out, lut_sym, lut_info, sorted_syms,
                                 first_code, first_index, len_count, max_len)
            if st == OK:
                st = _seg_finish(src, pos2, o2, e2, seg_bits[j0 + 3], out, lut_sym, lut_info, sorted_syms,
                                 first_code, first_index, len_count, max_len)
            if st == OK:
                st = _seg_finish(src, pos3, o3, e3, seg_bits[j0 + 4], out, lut_sym, lut_info, sorted_syms,
                                 first_code, first_index, len_count, max_len)
            if st != OK:
                return st
            j0 += 4
        else:
            st = _seg_finish(src, seg_bits[j0], seg_out[j0], seg_out[j0 + 1], seg_bits[j0 + 1], out,
                             lut_sym, lut_info, sorted_syms, first_code, first_index, len_count, max_len)
            if st != OK:
                return st
            j0 += 1
    return OK


# Packed tables: one uint64 per LUT index holds all a fast lookup needs, so a lookup does one
# table load (lut_sym + lut_info take two). Bits 0-3: the bits the entry's codes use (0 = slow
# path: the first code is longer than the table or matches nothing).
# - uint8 outputs (_build_packed8): bits 8-11 the count, bits 12-15 the length of the first code
#   alone, bits 32-63 the symbols (byte j at 32 + 8j).
# - uint16 outputs whose symbols leave the low `shift` >= 4 bits of their lane free (exponent
#   symbols shifted into place, _build_packed16): lane j (bits 16j..16j+15) holds symbol j << shift,
#   lane 1's low 4 bits the bytes the symbols fill (2 * count), lane 2's the length of the first
#   code alone; the caller masks the low `shift` bits of every output.
# The first code's length lets the tails (one code at a time, bounds-checked) use the same table,
# so a decode touches no other one: a tensor's first chunk finds it cold.
# Bits 4-5 are 0 except for uint16 entries with shift < 6.
@nb.njit(nogil=True, cache=True)
def _build_packed16(lut_sym, lut_info, shift, packed):
    for i in range(lut_info.shape[0]):
        info = np.int64(lut_info[i])
        nsym = (info >> 8) & 15
        e = np.uint64(0)
        if nsym > 0:
            for j in range(nsym):
                sym = (lut_sym[i] >> np.uint64(16 * j)) & np.uint64(0xFFFF)
                e |= (sym << np.uint64(shift)) << np.uint64(16 * j)
            e |= np.uint64(info & 15) | (np.uint64(2 * nsym) << np.uint64(16)) \
                | (np.uint64((info >> 12) & 15) << np.uint64(32))
        packed[i] = e


@nb.njit(nogil=True, cache=True)
def _build_packed8(lut_sym8, lut_info, packed):
    for i in range(lut_info.shape[0]):
        info = np.int64(lut_info[i])
        nsym = (info >> 8) & 15
        e = np.uint64(0)
        if nsym > 0:
            e = (lut_sym8[i] << np.uint64(32)) | np.uint64(info & 15) | (np.uint64(nsym) << np.uint64(8)) \
                | (np.uint64((info >> 12) & 15) << np.uint64(12))
        packed[i] = e


@intrinsic
def _store_lanes(typingctx, addr, e, itemsize):
    """Store a packed entry's 4 output lanes at a raw address: all 8 bytes for uint16 outputs, the
    high 4 bytes for uint8 ones (itemsize: a compile-time constant; no bounds check)."""
    if not (isinstance(addr, types.Integer) and isinstance(e, types.Integer)
            and isinstance(itemsize, types.IntegerLiteral)):
        return None
    size = itemsize.literal_value

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[1], signature.args[1], types.uint64)
        if size == 1:
            v = builder.trunc(builder.lshr(v, ir.Constant(ir.IntType(64), 32)), ir.IntType(32))
        ptr = builder.inttoptr(args[0], v.type.as_pointer())
        builder.store(v, ptr, align=1)
        return context.get_dummy_value()
    return types.void(addr, e, itemsize), codegen


@nb.njit(nogil=True, cache=True)
def _shift_range(out, lo, hi, shift):
    if shift:
        for i in range(lo, hi):
            out[i] = out[i] << shift


def njit_named(name: str):
    """nb.njit(nogil=True, cache=True) for a function a factory specializes (closure constants),
    under a name of its own for each specialization (e.g. "_decode_block_s6_l12"). numba names
    compiled code by qualified name, argument types and a per-process counter, and links a
    callee's code into its caller under that name: two closures of one factory, compiled in two
    processes, can share a name, and loaded from the cache into a third, one caller ran the other
    closure's code (seen: a bytegroup chunk decoder calling another one's block decoder)."""
    def wrap(fn):
        fn.__name__ = fn.__qualname__ = name
        return nb.njit(nogil=True, cache=True)(fn)
    return wrap


def _make_packed_tail(itemsize, lut_bits):
    """_seg_finish for a packed kernel: one reader alone, whole lookups while a 4-lane store and
    an 8-byte load stay in bounds, then bounds-checked one-code steps reading the first code's
    length and output lane from the packed entry, so a decode touches no other table.

    The interleaved rounds stop when the first segment nears its end; the others may still hold
    hundreds of codes (segments end unevenly), which whole lookups decode ~3x faster than single
    codes: 6-7 % of a BF16 chunk's Huffman time (MiniLM, /tmp script)."""
    len1_shift = np.uint64(32 if itemsize == 2 else 12)
    lane_shift = np.uint64(0 if itemsize == 2 else 32)
    lane_mask = np.uint64(0xFFFF if itemsize == 2 else 0xFF)
    adv = np.uint64(16 if itemsize == 2 else 8)     # the entry's byte count field
    size = np.uint64(itemsize)

    @njit_named(f"_packed_tail_b{itemsize}_l{lut_bits}")
    def seg_finish(src, pos, o, end, end_bit, out, packed, shift, sorted_syms, first_code,
                   first_index, len_count, max_len):
        nbytes = src.shape[0]
        sh = np.uint64(64 - lut_bits)
        m15 = np.uint64(15)
        lim = 8 * (nbytes - 8)          # a full 8-byte load at bit pos needs pos <= lim
        ob = _addr(out)
        while True:
            # a lookup writes <= 4 outputs (one 4-lane store) and moves <= lut_bits bits
            safe = min((end - o) >> 2, (lim - pos) // lut_bits + 1)
            if pos > lim or safe <= 0:
                break
            w = ob + size * np.uint64(o)
            slow = False
            for _ in range(safe):
                e = packed[(_load_be64(src, pos >> 3) << np.uint64(pos & 7)) >> sh]
                if e & m15 == 0:
                    slow = True
                    break
                _store_lanes(w, e, itemsize)
                pos += np.int64(e & m15)
                w += (e >> adv) & m15
            o = np.int64((w - ob) // size)
            if slow:        # a code longer than the table: one canonical step, shifted into place
                pos, o, st = _slow_step(src, pos, o, out, sorted_syms, first_code, first_index,
                                        len_count, max_len, lut_bits)
                if st != OK:
                    return st
                _shift_range(out, o - 1, o, shift)
        while o < end:
            buf = _window(src, pos)
            e = packed[buf >> sh]
            len1 = np.int64((e >> len1_shift) & np.uint64(15))
            if len1 > 0:
                out[o] = (e >> lane_shift) & lane_mask
                pos += len1
            else:
                s, ln = _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, max_len, lut_bits)
                if ln == 0:
                    return ERR_BAD_CODE
                out[o] = s << shift
                pos += ln
            o += 1
            if pos > 8 * nbytes:
                return ERR_EXHAUSTED
        if pos != end_bit:
            return ERR_LENGTH
        return OK
    return seg_finish


def _rounds_source(readers: int) -> str:
    """Source of `_rounds_factory_r<readers>(itemsize, umask, lut_bits)`, which returns the njit
    function `rounds` (below): the interleaved lookups of `readers` segments. Generated because
    each reader's state must be named variables, kept in registers, not arrays."""
    R = range(readers)

    def each(fmt, indent):
        return "".join(" " * indent + fmt.format(j=j, k=j + 1) + "\n" for j in R)

    def all_of(fmt, op):      # min/max of one expression over the readers, as a balanced tree
        terms = [fmt.format(j=j) for j in R]
        while len(terms) > 1:
            terms = [f"{op}({a}, {b})" for a, b in zip(terms[::2], terms[1::2])] \
                + (terms[-1:] if len(terms) % 2 else [])
        return terms[0]

    lookups = "".join(f"""\
                    e = packed[b{j} >> sh]
                    if e & m15 == 0:
                        slow = {j}
                        break
                    _store_lanes(w{j}, e, itemsize)
                    b{j} <<= e & mu
                    w{j} += (e >> adv) & m15
""" for j in R)
    slow_steps = "".join(f"""\
            {"if" if j == 0 else "elif"} slow == {j}:
                pos{j}, o{j}, st = _slow_step(src, pos{j}, o{j}, out, sorted_syms, first_code, first_index,
                                        len_count, max_len, lut_bits)
                _shift_range(out, o{j} - 1, o{j}, shift)
""" for j in R)
    return f"""\
def _rounds_factory_r{readers}(itemsize, umask, lut_bits):
    @njit_named(f"_rounds_r{readers}_b{{itemsize}}_u{{umask}}_l{{lut_bits}}")
    def rounds(src, sel, pos, o, e, out, packed, shift, pf, pf_end, sorted_syms, first_code, first_index,
               len_count, max_len):
        # segments sel[0..{readers - 1}], each at bit pos[i] and output o[i] of its end e[i] (updated)
        nbytes = src.shape[0]
        lim = 8 * (nbytes - 8)          # a full 8-byte load at bit pos needs pos <= lim
        sh = np.uint64(64 - lut_bits)
        one = np.uint64(1)
        m7 = np.uint64(7)
        m15 = np.uint64(15)
        mu = np.uint64(umask)
        s3 = np.uint64(3)
        adv = np.uint64(16 if itemsize == 2 else 8)     # the entry's byte count field
        size = np.uint64(itemsize)
{each("i{j} = sel[{j}]", 8)}{each("pos{j} = pos[i{j}]", 8)}{each("o{j} = o[i{j}]", 8)}\
{each("e{j} = e[i{j}]", 8)}\
        sb = _addr(src)
        ob = _addr(out)
        st = OK
        while True:
            # a round writes <= 16 outputs per segment (4 stores of 4 lanes) and consumes
            # <= 4 * lut_bits bits
            safe = {all_of("(e{j} - o{j}) >> 4", "min")}
            safe = min(safe, (lim - {all_of("pos{j}", "max")}) // (4 * lut_bits))
            if safe <= 0:
                break
            # readers: a byte pointer and a bit buffer ending in a marker bit, so the bits used are
            # its trailing zeros (no position update per lookup); outputs: byte pointers. Raw
            # addresses keep every reader in registers; `safe` bounds every access.
{each("p{j} = sb + np.uint64(pos{j} >> 3)", 12)}\
{each("b{j} = (_load_be64_at(p{j}) | one) << np.uint64(pos{j} & 7)", 12)}\
{each("w{j} = ob + size * np.uint64(o{j})", 12)}\
            slow = -1
            for _ in range(safe):
                # 4 lookups per reader use <= 48 of the >= 56 bits its buffer holds (the marker
                # sits below them); then each reader moves on by its whole bytes used and reloads
                for _r in range(4):
{lookups}\
                if slow >= 0:
                    break
{each("t{j} = _ctz64(b{j})", 16)}{each("p{j} += t{j} >> s3", 16)}\
{each("b{j} = (_load_be64_at(p{j}) | one) << (t{j} & m7)", 16)}\
                if pf < pf_end:
                    _prefetch(pf)
                    _prefetch(pf + np.uint64(64))
                    _prefetch(pf + np.uint64(128))
                    _prefetch(pf + np.uint64(192))
                    pf += np.uint64(256)
{each("pos{j} = np.int64(np.uint64(8) * (p{j} - sb) + _ctz64(b{j}))", 12)}\
{each("o{j} = np.int64((w{j} - ob) // size)", 12)}\
            # a code longer than the table (rare): one canonical step, its symbol shifted into place
{slow_steps}\
            if st != OK:
                break
{each("pos[i{j}] = pos{j}", 8)}{each("o[i{j}] = o{j}", 8)}\
        return st, pf
    return rounds
"""


# Segments end unevenly where a chunk's statistics drift: each segment holds the same number of
# symbols, so a segment of short codes runs out of rounds first. Once the interleaved rounds stop,
# segments with at least this many outputs left go on 2 at a time instead of alone.
_REGROUP_MIN = 64


def _packed_kernel_source(readers: int) -> str:
    """Source of `_packed_factory_r<readers>(itemsize, umask, lut_bits)`, which returns the njit
    kernel `decode_packed` (see _make_packed_kernel) for that many segments. It calls the globals
    of the namespace it is executed in: `rounds_all` (all segments' interleaved rounds), `rounds2`
    (2 of them) and `seg_finish` (one segment alone, to its end)."""
    return f"""\
def _packed_factory_r{readers}(itemsize, umask, lut_bits):
    @njit_named(f"_decode_packed_r{readers}_b{{itemsize}}_u{{umask}}_l{{lut_bits}}")
    def decode_packed(src, seg_bits, seg_out, out, packed, shift, ahead, sorted_syms, first_code,
                      first_index, len_count, max_len):
        nbytes = src.shape[0]
        n = out.shape[0]
        if (seg_bits.shape[0] != {readers + 1} or seg_out.shape[0] != {readers + 1} or seg_bits[0] != 0
                or seg_out[0] != 0 or seg_out[{readers}] != n or seg_bits[{readers}] > 8 * nbytes
                or packed.shape[0] != (1 << lut_bits) or src.strides[0] != 1 or out.strides[0] != itemsize):
            return ERR_SEGMENTS
        for j in range({readers}):
            if seg_bits[j + 1] < seg_bits[j] or seg_out[j + 1] < seg_out[j]:
                return ERR_SEGMENTS
        lim = 8 * (nbytes - 8)
        pos = seg_bits[:{readers}].copy()
        o = seg_out[:{readers}].copy()
        e = seg_out[1:].copy()
        sel = np.arange({readers})
        pf = _addr(ahead)
        pf_end = pf + np.uint64(ahead.shape[0])
        if n >= 8 * packed.shape[0]:        # a cold table costs a miss per line: fetch it up front
            tb = _addr(packed)
            for q in range(0, 8 * packed.shape[0], 64):
                _prefetch(tb + np.uint64(q))
        st, pf = rounds_all(src, sel, pos, o, e, out, packed, shift, pf, pf_end, sorted_syms, first_code,
                            first_index, len_count, max_len)
        # segments still far from their ends: the 2 with the most left, interleaved, until one of
        # them nears its end (each call ends one, so this loop runs at most {readers} times). A
        # selected segment has room for a round (the rounds' own test), and a call that decodes
        # nothing ends the loop, whatever the rounds do.
        while st == OK:
            k = 0
            done = 0
            for j in range({readers}):
                done += o[j]
                if e[j] - o[j] >= _REGROUP_MIN and pos[j] + 4 * lut_bits <= lim:
                    sel[k] = j
                    k += 1
            if k < 2:
                break
            for a in range(1, k):       # most outputs left first (insertion sort of <= {readers})
                x = sel[a]
                b = a - 1
                while b >= 0 and e[sel[b]] - o[sel[b]] < e[x] - o[x]:
                    sel[b + 1] = sel[b]
                    b -= 1
                sel[b + 1] = x
            st, pf = rounds2(src, sel, pos, o, e, out, packed, shift, pf, pf_end, sorted_syms, first_code,
                             first_index, len_count, max_len)
            if o.sum() == done:
                break
        # the tails: each segment alone, from the same table (outputs in place)
        for j in range({readers}):
            if st != OK:
                break
            st = seg_finish(src, pos[j], o[j], e[j], seg_bits[j + 1], out, packed, shift, sorted_syms,
                            first_code, first_index, len_count, max_len)
        return st
    return decode_packed
"""


def _make_packed_kernel(itemsize, umask, lut_bits, readers=4):
    """The packed-table decoder of `readers` segments (seg_bits / seg_out of readers + 1 entries),
    interleaved, into outputs of `itemsize` bytes (1: uint8, 2: uint16) from packed tables (above)
    of 1 << lut_bits entries. umask = 63 where the entries' bits 4-5 are 0: the buffer shift then
    takes the entry as it is (x86 masks shift counts to 6 bits); else 15. The compile-time table
    size keeps what the hot loop needs in registers.

    decode_packed(src, seg_bits, seg_out, out, packed, shift, ahead, sorted_syms, first_code,
    first_index, len_count, max_len) decodes into out (see Decoder.decode_segments); uint16
    outputs get symbol << shift plus garbage in the low `shift` bits, uint8 ones the symbol
    (shift 0). The other tables are the decoder's canonical ones (codes longer than the lookup).
    Returns a status.

    `ahead` (uint8 array) is what the caller reads next: each round prefetches its next 4 cache
    lines until its end, so the compute-bound rounds pull it in from memory for free. An F32
    chunk's 3 raw planes are 3x its coded plane: a line per round covered a quarter of them, 4
    took MiniLM FP32's 64K-value chunks from 42 to 39.5 us (cold memory, /tmp script); the bound
    keeps a short `ahead` from prefetching the next chunk (which cost BF16 25-65 %).

    Rounds of 4 lookups per segment run while every segment has room for a round; a code longer
    than the table leaves them for one canonical step. Segments hold equal numbers of symbols,
    not bits, so where a chunk's statistics drift one runs out of rounds long before the others:
    those still at least _REGROUP_MIN outputs from their ends then go on 2 at a time, the ones
    with the most left first (3 at a time were 5 % faster on drifting test data, for 1.4 s more
    compilation per kernel). Then each segment finishes alone (_make_packed_tail) and must end
    exactly at its end bit. On a chunk of MiniLM FP32's position embeddings (one segment
    needing a third of the lookups of four others) the tails had been 3x slower per code than the
    rounds: 167 to 73 us per plane.

    The source is generated per reader count, and executed once per kernel, in a namespace whose
    `seg_finish` is that kernel's tail and whose `rounds_all` and `rounds2` its rounds
    (_rounds_source): numba's cache keys a kernel by its code and the values it
    closes over, so a closure over the tail (a dispatcher, which never pickles to the same bytes
    twice) missed the cache in every process. 4 readers are latency-bound on x86 (each lookup
    waits for the last one's shift); 6 run 14 % faster on MiniLM's BF16 exponents, 8 spill
    registers and lose all of that (/tmp script, best of 20)."""
    ns = dict(globals())
    ns["seg_finish"] = _make_packed_tail(itemsize, lut_bits)
    ns["rounds_all"] = _rounds(itemsize, umask, lut_bits, readers)
    ns["rounds2"] = _rounds(itemsize, umask, lut_bits, 2)
    exec(compile(_packed_kernel_source(readers), __file__, "exec"), ns)   # noqa: S102 (our own text)
    return ns[f"_packed_factory_r{readers}"](itemsize, umask, lut_bits)


_ROUNDS: dict = {}


def _rounds(itemsize, umask, lut_bits, readers):
    """The interleaved rounds of `readers` segments (_rounds_source), one per specialization."""
    key = (itemsize, umask, lut_bits, readers)
    if key not in _ROUNDS:
        ns = dict(globals())
        exec(compile(_rounds_source(readers), __file__, "exec"), ns)   # noqa: S102 (our own text)
        _ROUNDS[key] = ns[f"_rounds_factory_r{readers}"](itemsize, umask, lut_bits)
    return _ROUNDS[key]




def decode(stream, nbits: int, n: int, lengths, max_len: int, out=None, what: str = "Huffman stream"):
    """Decode n symbols from an MSB-first Huffman bitstream of exactly nbits bits."""
    stream = np.frombuffer(stream, np.uint8) if not isinstance(stream, np.ndarray) else stream
    return get_decoder(lengths, max_len).decode(stream, nbits, n, out, what)


# ---------------------------------------------------------------------------------------------
# self-describing byte block: table + bitstream (used by bytegroup planes)
# ---------------------------------------------------------------------------------------------
BLOCK_MAX_LEN = 15


def unpack_lengths(buf: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """A block's code table (a 32-byte bitmap of used symbols, MSB first, then their 4-bit lengths,
    high nibble first): (lengths, bytes consumed)."""
    if buf.size < 32:
        raise FormatError(f"{what}: code table truncated ({buf.size} of at least 32 bytes)")
    used = np.unpackbits(buf[:32], bitorder="big").astype(bool)
    k = int(used.sum())
    nb_ = (k + 1) // 2
    if buf.size < 32 + nb_:
        raise FormatError(f"{what}: code table truncated ({buf.size} of {32 + nb_} bytes)")
    nib = buf[32:32 + nb_]
    ls = np.empty(2 * nb_, np.uint8)
    ls[0::2] = nib >> 4
    ls[1::2] = nib & 15
    lengths = np.zeros(256, np.uint8)
    lengths[used] = ls[:k]
    if k and (lengths[used] == 0).any():
        raise FormatError(f"{what}: code table marks a symbol used but gives it length 0")
    return lengths, 32 + nb_


# Segment counts of Huffman streams: a block is in LEGACY_SEGMENTS unless its user says otherwise
# (the field streams of quantized codecs), and so is every stream of a codec config written before
# the key `segments` existed (`exponent`, `bytegroup`); writers now use 6, since one lookup waits
# for the last one's shift and 6 interleaved readers hide more of that latency than 4 (MiniLM BF16
# exponents 14 % faster), while 8 run out of x86's registers.
LEGACY_SEGMENTS = 4
DEFAULT_SEGMENTS = 6
MAX_SEGMENTS = 8

# Compiled callers index the tables of kernels and decoders below with constants (closure
# values): PACKED16_KERNELS[2 * segments + narrow] for 16-bit lanes (exponent codes; narrow:
# shift >= 6, entries whose bits 4-5 are free, else shift 4 or 5), PACKED8_KERNELS and
# BLOCK_DECODERS [table_index(segments, table bits)] for byte alphabets. None where there is no
# such kernel; each compiles when first called. Flat tuples: numba types a tuple of tuples of
# functions as first-class function values (called through pointers, an experimental feature).
def table_index(nseg: int, lut_bits: int) -> int:
    return nseg * (LUT_BITS + 1) + lut_bits


_PACKED_SEGMENTS = (LEGACY_SEGMENTS, DEFAULT_SEGMENTS)


def has_packed_kernels(nseg: int) -> bool:
    """Whether streams of nseg segments have packed kernels (others take the generic one)."""
    return nseg in _PACKED_SEGMENTS


PACKED16_KERNELS = tuple(_make_packed_kernel(2, 63 if narrow else 15, LUT_BITS, r) if has_packed_kernels(r) else None
                         for r in range(MAX_SEGMENTS + 1) for narrow in (0, 1))
PACKED8_KERNELS = tuple(_make_packed_kernel(1, 63, b, r) if has_packed_kernels(r) and b >= 10 else None
                        for r in range(MAX_SEGMENTS + 1) for b in range(LUT_BITS + 1))


def checked_segments(segments) -> int:
    """A codec's `segments` argument: None (the writer's default) or an integer in 1..8."""
    if segments is None:
        return DEFAULT_SEGMENTS
    if type(segments) is not int or not 1 <= segments <= MAX_SEGMENTS:
        raise ValueError(f"segments must be an integer in [1, {MAX_SEGMENTS}], got {segments!r}")
    return segments


def from_config_with_segments(cls, params: dict):
    """cls(**params) for a codec config: one without `segments` is the 1.0 layout (4 segments)
    when it decodes, and fits to the writer's default when it compresses (a user's {"id": ...})."""
    if "segments" in params:
        if params["segments"] is None:      # None is the constructor's "default", not a layout
            raise ValueError(f"segments must be an integer in [1, {MAX_SEGMENTS}], got None")
        return cls(**params)
    codec = cls(**params, segments=LEGACY_SEGMENTS)
    codec.segments_given = False
    return codec


@register_jitable
def segment_table_size(nseg: int) -> int:
    """Bytes of a stream's segment table (a Huffman block's, an exponent chunk's): the start bits
    of segments 1..nseg-1, u32 each. (Plain Python, and inlined into compiled callers.)"""
    return 4 * (nseg - 1)


@nb.njit(nogil=True, cache=True, inline="always")
def _put_code(acc, nacc, code, ln):
    """Add a code below the nacc pending bits of the left-aligned accumulator acc."""
    nacc += np.int64(ln)
    return acc | (np.uint64(code) << np.uint64(64 - nacc)), nacc


@nb.njit(nogil=True, cache=True, inline="always")
def _flush(dst, p, acc, nacc):
    """Store acc at dst[p:p + 8] (big-endian) and move on by its whole bytes."""
    _store_be64(dst, p, acc)
    k = nacc >> 3
    return p + k, acc << np.uint64(8 * k), nacc & 7


@nb.njit(nogil=True, cache=True)
def _encode_run(symbols, lengths, codes, dst, p, acc, nacc):
    """Append the codes of `symbols` (all at most 19 bits) to the writer state of
    _encode_segmented: acc holds the pending bits left-aligned (its top nacc < 8), codes are ORed
    in below them, and every 3 codes (at most 7 + 3 * 19 = 64 bits) one unaligned 8-byte store
    flushes the whole bytes. Unsigned indices: numba adds negative-index handling to i + 1 with
    signed ones, and a store per code cost 50 % more."""
    n = symbols.shape[0]
    ng = n // 3
    for g in range(ng):
        i = np.uint64(3 * g)
        s = symbols[i]
        acc, nacc = _put_code(acc, nacc, codes[s], lengths[s])
        s = symbols[i + np.uint64(1)]
        acc, nacc = _put_code(acc, nacc, codes[s], lengths[s])
        s = symbols[i + np.uint64(2)]
        acc, nacc = _put_code(acc, nacc, codes[s], lengths[s])
        p, acc, nacc = _flush(dst, p, acc, nacc)
    for i in range(3 * ng, n):
        s = symbols[i]
        acc, nacc = _put_code(acc, nacc, codes[s], lengths[s])
        p, acc, nacc = _flush(dst, p, acc, nacc)
    return p, acc, nacc


@nb.njit(nogil=True, cache=True)
def _encode_segmented(symbols, lengths, codes, dst, start, nseg, seg_bits):
    """Write the codes of `symbols` MSB-first at dst[start:] (a 64-bit accumulator flushed by one
    unaligned 8-byte store per code; dst must hold 8 bytes past the last bit, written as zeros),
    noting in seg_bits[j] the bit offset of the code of symbol (j * n) // nseg, j = 0..nseg.
    The segment starts are noted between runs over slices: a counting pass first cost 50 % more,
    and a loop over explicit index ranges compiles 30 % slower than one over a whole slice."""
    n = symbols.shape[0]
    acc = np.uint64(0)
    nacc = np.int64(0)
    p = np.int64(start)
    i0 = 0
    for j in range(nseg):
        seg_bits[j] = 8 * (p - start) + nacc
        i1 = ((j + 1) * n) // nseg
        p, acc, nacc = _encode_run(symbols[i0:i1], lengths, codes, dst, p, acc, nacc)
        i0 = i1
    seg_bits[nseg] = 8 * (p - start) + nacc


def encode_block(data: np.ndarray, counts: np.ndarray | None = None, nseg: int = LEGACY_SEGMENTS) -> bytes:
    """Self-describing Huffman block of a uint8 array (layout in decode_block), its stream in
    nseg segments."""
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    if counts is None:
        counts = np.bincount(data, minlength=256)
    out = np.empty(block_size(counts, nseg) + 8, np.uint8)
    return out[:encode_block_into(data, counts, out, 0, nseg=nseg)].tobytes()


def encode_block_into(data: np.ndarray, counts: np.ndarray, out: np.ndarray, off: int,
                      lengths: np.ndarray | None = None, nseg: int = LEGACY_SEGMENTS) -> int:
    """Write encode_block(data, nseg=nseg) to out[off:]; out must hold 8 spare bytes after the
    block (they are overwritten). `counts` must be data's byte histogram; `lengths`, if given, the
    code lengths block_lengths(counts) returned. Returns the block's end offset."""
    if not 1 <= nseg <= MAX_SEGMENTS:
        raise ValueError(f"a block has 1..{MAX_SEGMENTS} segments, not {nseg}")
    if lengths is None:
        lengths = code_lengths(counts, BLOCK_MAX_LEN)
    lengths = np.ascontiguousarray(lengths, np.uint8)
    if int(lengths.max(initial=0)) > BLOCK_MAX_LEN:
        raise ValueError(f"block codes are at most {BLOCK_MAX_LEN} bits")
    end = _write_block(np.ascontiguousarray(data, np.uint8), np.asarray(counts, np.int64), lengths, out, off, nseg)
    if end == -1:
        raise ValueError("encode_block_into: out is too small")
    if end == -2:
        raise ValueError("encode_block_into: counts are not the data's histogram")
    return end


@nb.njit(nogil=True, cache=True)
def _write_block(data, counts, lengths, out, off, nseg):
    """encode_block_into in one compiled call (the bytegroup chunk writer calls it per plane):
    the block's end offset, -1 if out lacks room for it and 8 spare bytes, -2 if counts are not
    data's histogram (lengths: BLOCK_MAX_LEN at most, from counts)."""
    nbits = np.int64(0)
    k = 0
    for b in range(256):
        if lengths[b] > 0:
            k += 1
            nbits += counts[b] * lengths[b]
    trailer = segment_table_size(nseg)
    head = off + 4 + 32 + (k + 1) // 2 + trailer
    end = head + (nbits + 7) // 8
    if out.shape[0] < end + 8:
        return -1
    seg = np.zeros(nseg + 1, np.int64)
    if data.shape[0]:
        _encode_segmented(data, lengths, _canonical_codes(lengths), out, head, nseg, seg)
    if seg[nseg] != nbits:
        return -2
    for j in range(4):
        out[off + j] = np.uint8((nbits >> (8 * j)) & 255)
    # the table (unpack_lengths): a bitmap of used symbols, MSB first, then their 4-bit lengths
    t = off + 4
    for g in range(32):
        m = 0
        for j in range(8):
            if lengths[8 * g + j] > 0:
                m |= 128 >> j
        out[t + g] = np.uint8(m)
    t += 32
    h = 0
    for b in range(256):
        if lengths[b] > 0:
            if h % 2 == 0:
                out[t + h // 2] = np.uint8(lengths[b] << 4)
            else:
                out[t + h // 2] |= np.uint8(lengths[b])
            h += 1
    for j in range(1, nseg):
        v = seg[j]
        for q in range(4):
            out[head - trailer + 4 * (j - 1) + q] = np.uint8((v >> (8 * q)) & 255)
    return end


@nb.njit(nogil=True, cache=True)
def _block_lengths_nb(counts, lengths_out, nseg):
    """block_lengths in one compiled call (for callers that size several blocks per chunk):
    writes the code lengths (uint8) and returns the byte size of the block of nseg segments; 0 for
    no symbols."""
    lens = _limit_lengths(counts, _huffman_lengths(counts), BLOCK_MAX_LEN)
    nbits = np.int64(0)
    k = 0
    for b in range(lens.shape[0]):
        lengths_out[b] = lens[b]
        if lens[b] > 0:
            k += 1
            nbits += counts[b] * lens[b]
    if k == 0:
        return 0
    return 4 + 32 + (k + 1) // 2 + segment_table_size(nseg) + (nbits + 7) // 8


def block_lengths(counts: np.ndarray, nseg: int = LEGACY_SEGMENTS) -> tuple[int, np.ndarray]:
    """(encode_block's exact byte size for data with these counts, its code lengths)."""
    counts = np.asarray(counts, np.int64)
    lengths = code_lengths(counts, BLOCK_MAX_LEN)
    nbits = int((counts * lengths).sum())
    k = int(np.count_nonzero(lengths))
    return 4 + 32 + (k + 1) // 2 + segment_table_size(nseg) + (nbits + 7) // 8, lengths


def block_size(counts: np.ndarray, nseg: int = LEGACY_SEGMENTS) -> int:
    """Exact byte size encode_block would produce for data with these counts."""
    return block_lengths(counts, nseg)[0]


def decode_block(buf: np.ndarray, out: np.ndarray, what: str = "Huffman block",
                 nseg: int = LEGACY_SEGMENTS) -> np.ndarray:
    """Decode an encode_block(nseg=nseg) block that must fill `out` (uint8) exactly.

    Block: u32 LE bit count | 32-byte bitmap of used byte values | their 4-bit code lengths (high
    nibble first, max 15) | nseg - 1 x u32 LE bit offsets of the codes of symbols j*n//nseg,
    j = 1..nseg-1 (segment starts; decoders decode the segments interleaved; 4 segments unless
    the block's user says otherwise) | MSB-first canonical Huffman bitstream, exactly ceil(bits/8)
    bytes.
    """
    if not 1 <= nseg <= MAX_SEGMENTS:
        raise ValueError(f"a block has 1..{MAX_SEGMENTS} segments, not {nseg}")
    if buf.size < 4:
        raise FormatError(f"{what}: truncated header ({buf.size} of 4 bytes)")
    nbits = int(buf[:4].view("<u4")[0])
    lengths, used = unpack_lengths(buf[4:], what)
    head = 4 + used + segment_table_size(nseg)
    if buf.size < head:
        raise FormatError(f"{what}: segment table truncated")
    body = buf[head:]
    if (nbits + 7) // 8 != body.size:
        raise FormatError(f"{what}: declares {nbits} bits, holds {body.size} bytes")
    if out.size == 0:
        if nbits:
            raise FormatError(f"{what}: {nbits} bits for 0 symbols")
        return out
    if not lengths.any():
        raise FormatError(f"{what}: empty code table for {out.size} symbols")
    n = out.size
    seg_bits = np.empty(nseg + 1, np.int64)
    seg_bits[0] = 0
    seg_bits[1:nseg] = buf[4 + used:head].view("<u4")
    seg_bits[nseg] = nbits
    seg_out = np.array([(j * n) // nseg for j in range(nseg + 1)], np.int64)
    lut_bits = _block_lut_bits(n)
    return get_decoder(lengths, BLOCK_MAX_LEN, lut_bits).decode_segments(body, seg_bits, seg_out, out, what)


@nb.njit(nogil=True, cache=True)
def _block_lut_bits(n):
    """Table size for a block of n symbols: a smaller table for smaller blocks, since building it
    costs about as much as decoding 2-4 symbols per entry and every block has its own table."""
    return 12 if n >= (1 << 17) else 11 if n >= (1 << 15) else 10 if n >= (1 << 13) else 8


# block decoding entirely in numba (for callers that decode many blocks, e.g. bytegroup planes)
BLK_OK = 0
BLK_ERR_HEADER = 10     # truncated header, code table or segment table
BLK_ERR_SIZE = 11       # bit count does not match the stream's byte size
BLK_ERR_TABLE = 12      # used symbol with length 0, empty table, or not a prefix code
BLK_ERR_EMPTY = 13      # bits for 0 symbols
BLOCK_STATUS_TEXT = {
    BLK_ERR_HEADER: "truncated header, code table or segment table",
    BLK_ERR_SIZE: "declared bit count does not match the stream size",
    BLK_ERR_TABLE: "invalid code table (a used symbol of length 0, no symbols, or not a prefix code)",
    BLK_ERR_EMPTY: "bits for 0 symbols",
    **_STATUS_TEXT,
}


@nb.njit(nogil=True, cache=True)
def _block_header(buf, n, lengths, seg_bits, seg_out):
    """Parse and check a block's header for n symbols: fills lengths and the segments (as many as
    seg_bits has entries after the first), returns (status, offset of the bitstream); status
    BLK_OK with n == 0 means nothing to decode."""
    size = buf.shape[0]
    nseg = seg_bits.shape[0] - 1
    if size < 4 + 32:
        return BLK_ERR_HEADER, 0
    nbits = np.int64(buf[0]) | (np.int64(buf[1]) << 8) | (np.int64(buf[2]) << 16) | (np.int64(buf[3]) << 24)
    k = 0
    for sym in range(256):
        if (buf[4 + (sym >> 3)] >> (7 - (sym & 7))) & 1:
            k += 1
    nb_ = (k + 1) // 2
    trailer = segment_table_size(nseg)
    head = 4 + 32 + nb_ + trailer
    if size < head:
        return BLK_ERR_HEADER, 0
    t = 0
    for sym in range(256):
        if (buf[4 + (sym >> 3)] >> (7 - (sym & 7))) & 1:
            byte = buf[36 + (t >> 1)]
            ln = (byte >> 4) if (t & 1) == 0 else (byte & 15)
            if ln == 0:
                return BLK_ERR_TABLE, 0
            lengths[sym] = ln
            t += 1
    if (nbits + 7) // 8 != size - head:
        return BLK_ERR_SIZE, 0
    if n == 0:
        return (BLK_ERR_EMPTY if nbits else BLK_OK), head
    if k == 0:
        return BLK_ERR_TABLE, 0
    lo, hi, kraft = _length_stats(lengths)
    if kraft > (np.int64(1) << MAX_CODE_LEN):
        return BLK_ERR_TABLE, 0
    seg_bits[0] = 0
    seg_bits[nseg] = nbits
    for j in range(nseg + 1):
        seg_out[j] = (j * n) // nseg
    for j in range(1, nseg):
        q = head - trailer + 4 * (j - 1)
        seg_bits[j] = np.int64(buf[q]) | (np.int64(buf[q + 1]) << 8) | (np.int64(buf[q + 2]) << 16) \
            | (np.int64(buf[q + 3]) << 24)
    return BLK_OK, head


def _block_kind(nseg: int, lut_bits: int) -> int:
    """The table size a block decoder is compiled for: lut_bits where a packed kernel serves the
    block (4 or 6 segments, 10- to 12-bit tables), else 0: one generic decoder per segment count
    for every size (fewer decoders to compile; the generic kernel takes the size at run time)."""
    return lut_bits if has_packed_kernels(nseg) and lut_bits >= 10 else 0


def _make_block_decoder(nseg, kind):
    """decode_block in one compiled call for blocks of nseg segments, (buf, out, ahead) -> a
    status (BLK_OK, BLK_ERR_*, or a _decode_segments one); kind: the table size of the blocks it
    takes (_block_kind). `ahead`: what the caller reads next, prefetched while decoding (see
    _make_packed_kernel). Both are closure constants, so numba prunes the other branches and
    compiles one kernel per decoder (a packed kernel takes about 2 s to compile: a file that needs
    one table size or none, as a model's small integer tensors, no longer waits for all six)."""
    packed_kernel = kind != 0
    kernel = table_index(nseg, kind)

    @njit_named(f"_decode_block_s{nseg}_l{kind}")
    def decode_block_nb(buf, out, ahead):
        n = out.shape[0]
        lut_bits = _block_lut_bits(n)
        if packed_kernel and n > 0 and lut_bits != kind:
            return ERR_SEGMENTS         # (the caller's mistake: another size's decoder)
        lengths = np.zeros(256, np.uint8)
        seg_bits = np.empty(nseg + 1, np.int64)
        seg_out = np.empty(nseg + 1, np.int64)
        st, head = _block_header(buf, n, lengths, seg_bits, seg_out)
        if st != BLK_OK or n == 0:
            return st
        sorted_syms = np.zeros(256, np.int64)
        first_code = np.zeros(MAX_CODE_LEN + 1, np.int64)
        first_index = np.zeros(MAX_CODE_LEN + 1, np.int64)
        len_count = np.zeros(MAX_CODE_LEN + 1, np.int64)
        _canonical_tables(lengths, sorted_syms, first_code, first_index, len_count)
        if not packed_kernel:
            # the generic kernel's tables, from the range builder's packed ones (the same entries:
            # lanes from bit 32 on, the info word below): a per-entry build cost most of a small
            # block's decode (4.7 us of a 384-symbol plane)
            packed = np.empty(1 << lut_bits, np.uint64)
            _build_packed_ranges(lengths, lut_bits, first_code, first_index, len_count, sorted_syms, packed,
                                 False, 0)
            lut_sym8 = np.empty(1 << lut_bits, np.uint64)
            lut_info = np.empty(1 << lut_bits, np.uint16)
            for i in range(1 << lut_bits):
                lut_sym8[i] = packed[i] >> np.uint64(32)
                lut_info[i] = np.uint16(packed[i] & np.uint64(0xFFFF))
            return _decode_segments(buf[head:], seg_bits, seg_out, out, lut_sym8, lut_info, sorted_syms,
                                    first_code, first_index, len_count, BLOCK_MAX_LEN)
        packed = np.empty(1 << kind, np.uint64)
        _build_packed_ranges(lengths, kind, first_code, first_index, len_count, sorted_syms, packed, False, 0)
        return PACKED8_KERNELS[kernel](buf[head:], seg_bits, seg_out, out, packed, 0, ahead, sorted_syms,
                                       first_code, first_index, len_count, BLOCK_MAX_LEN)
    return decode_block_nb


# Blocks of at least this many symbols (those that get LUT_BITS-bit tables) may be decoded into
# 16-bit words (WIDE_BLOCK_DECODERS).
WIDE_BLOCK_MIN = 1 << 17


def _make_wide_block_decoder(nseg):
    """decode_block of nseg (4 or 6) segments into uint16 words, (buf, out16, shift, ahead) -> a
    status, as the block decoder's: out16[i] = symbol i << shift plus garbage in the low `shift`
    (6..8) bits, as the exponent kernels leave them, for a caller that ORs in the other bits; a
    block of at least WIDE_BLOCK_MIN symbols. The lanes' stores then fill the output words during
    the compute-bound decode, instead of a later pass writing cold memory."""
    kernel = 2 * nseg + 1

    @njit_named(f"_decode_block_wide_s{nseg}")
    def decode_block_wide(buf, out16, shift, ahead):
        n = out16.shape[0]
        if n < WIDE_BLOCK_MIN or shift < 6 or shift > 8:
            return ERR_SEGMENTS
        lengths = np.zeros(256, np.uint8)
        seg_bits = np.empty(nseg + 1, np.int64)
        seg_out = np.empty(nseg + 1, np.int64)
        st, head = _block_header(buf, n, lengths, seg_bits, seg_out)
        if st != BLK_OK:
            return st
        sorted_syms = np.zeros(256, np.int64)
        first_code = np.zeros(MAX_CODE_LEN + 1, np.int64)
        first_index = np.zeros(MAX_CODE_LEN + 1, np.int64)
        len_count = np.zeros(MAX_CODE_LEN + 1, np.int64)
        _canonical_tables(lengths, sorted_syms, first_code, first_index, len_count)
        packed = np.empty(1 << LUT_BITS, np.uint64)
        _build_packed_ranges(lengths, LUT_BITS, first_code, first_index, len_count, sorted_syms, packed, True,
                             shift)
        return PACKED16_KERNELS[kernel](buf[head:], seg_bits, seg_out, out16, packed, shift, ahead,
                                        sorted_syms, first_code, first_index, len_count, BLOCK_MAX_LEN)
    return decode_block_wide


# The decoders: BLOCK_DECODERS[table_index(nseg, lut_bits)], WIDE_BLOCK_DECODERS[nseg] (None: no
# such decoder), each compiled when first called. Compiled callers index these with constants: a
# closure that captured a decoder would miss numba's cache in every new process (a dispatcher does
# not pickle to the same bytes twice), an integer does not.
BLOCK_LUT_BITS = (8, 10, 11, 12)        # what _block_lut_bits returns
_block_decoders = {(k, b): _make_block_decoder(k, b) for k in range(1, MAX_SEGMENTS + 1)
                   for b in {_block_kind(k, bits) for bits in BLOCK_LUT_BITS}}
BLOCK_DECODERS = tuple(_block_decoders[k, _block_kind(k, b)] if k and b in BLOCK_LUT_BITS else None
                       for k in range(MAX_SEGMENTS + 1) for b in range(LUT_BITS + 1))
WIDE_BLOCK_DECODERS = tuple(_make_wide_block_decoder(k) if has_packed_kernels(k) else None
                            for k in range(MAX_SEGMENTS + 1))


def block_decoder(nseg: int, n: int):
    """The compiled decoder for blocks of nseg segments and n symbols: (buf, out, ahead) -> status."""
    return BLOCK_DECODERS[table_index(nseg, _block_lut_bits(n))]
