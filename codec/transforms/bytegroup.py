"""`bytegroup`: ZipNN-style byte grouping for F16, BF16, F32, F64 and integer tensors.

Each element (itemsize s bytes, little-endian) is rotated left by `rotate` bits within its
8*s-bit word (for BF16/F32/F64, rotate=1 moves the sign to bit 0 so the exponent fills the top
byte), then split into s byte planes: plane p holds byte p of every rotated element. Each plane of
each chunk is stored with the best of three methods:

    0 raw       the n plane bytes
    1 huffman   `huffman.encode_block`: u32 LE bit count | 32-byte bitmap of used byte values |
                4-bit code lengths of the used values (high nibble first, max length 15) |
                S - 1 x u32 LE segment offsets: the bit at which the code of byte (j * n) // S
                starts, j = 1 .. S - 1 (decoders decode the S segments interleaved) |
                MSB-first canonical Huffman bitstream (exactly ceil(bits/8) bytes).
                S = the config's `segments` (1..8); a config without the key, as every file
                before it, has S = 4; new files have S = 6 (as `exponent`, and for the same
                reason: 6 interleaved readers hide more of each lookup's latency).
    2 zstd      one Zstandard frame (no content size, no checksum)
    3 huffman7  the plane's top bits raw, ceil(n/8) bytes (byte i's bit 7 at bit 7 - i % 8 of
                byte i // 8), then a `huffman` block (as method 1) of the bytes' low 7 bits. For
                F16's high byte, whose top bit is the incompressible sign: about the size of
                method 1, but 7-bit codes are shorter, so a lookup resolves more of them and the
                plane decodes about 20 % faster. (Readers older than this method reject it as
                an unknown method.)
    4 bits      u8 mask m (the bits that vary across the plane), u8 base c (the bits that do
                not, c & m == 0), then for each set bit q of m, lowest first, a map of ceil(n/8)
                bytes: byte i's bit q at bit 7 - i % 8 of byte i // 8 (as huffman7's top bits),
                the bits past n zero; byte i = c | its mapped bits. Exactly 2 + popcount(m) *
                ceil(n/8) bytes. For planes with bits that never change: a constant plane (an
                F32 upcast from BF16 has two) is 2 bytes, a plane of signs and zeros 1 bit per
                byte, where Huffman codes cannot go below 1 bit per byte; unpacking runs at
                memory speed. The writer takes it when it is no larger than the other methods.
                (Readers older than this method reject it as an unknown method.)

Chunk payload (n = decoded bytes // s, t = decoded bytes % s trailing bytes):
    s entries of 5 bytes: u8 method, u32 LE payload length   (plane 0 first)
    the s plane payloads, in plane order
    the t trailing bytes, raw
The payload is exactly that long; anything else is a FormatError.
"""
from __future__ import annotations

import threading
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..abc import Codec
from ..dtypes import lookup
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat, byte_entropy_bits
from ..entropy import huffman
from ..entropy.zstd import compress_bytes, decompress_into

RAW, HUFFMAN, ZSTD, HUFFMAN7, BITS = 0, 1, 2, 3, 4
_METHOD_NAMES = {RAW: "raw", HUFFMAN: "huffman", ZSTD: "zstd", HUFFMAN7: "huffman7", BITS: "bits"}
DEFAULT_CHUNK = 1 << 18


@nb.njit(nogil=True, cache=True, inline="always")    # inlined: the callers' shifts are constants
def _split2_rows(w, p0, p1, r, q):
    """p0[i], p1[i] = the low and high byte of w[i] rotated left by r (q = 16 - r, or 0 for 0)."""
    for i in range(p0.shape[0]):
        v = (w[i] << r) | (w[i] >> q)
        p0[i] = np.uint8(v & np.uint16(255))
        p1[i] = np.uint8((v >> np.uint16(8)) & np.uint16(255))


@nb.njit(nogil=True, cache=True, inline="always")
def _split4_rows(w, p0, p1, p2, p3, r, q):
    """The bytes of w[i] rotated left by r (q = 32 - r, or 0 for 0), lowest in p0."""
    for i in range(p0.shape[0]):
        x = (w[i] << r) | (w[i] >> q)
        p0[i] = np.uint8(x & np.uint32(255))
        p1[i] = np.uint8((x >> np.uint32(8)) & np.uint32(255))
        p2[i] = np.uint8((x >> np.uint32(16)) & np.uint32(255))
        p3[i] = np.uint8(x >> np.uint32(24))


@nb.njit(nogil=True, cache=True, inline="always")
def _split8_rows(w, p0, p1, p2, p3, p4, p5, p6, p7, r, q):
    """The bytes of w[i] rotated left by r (q = 64 - r, or 0 for 0), lowest in p0."""
    for i in range(p0.shape[0]):
        x = (w[i] << r) | (w[i] >> q)
        p0[i] = np.uint8(x & np.uint64(255))
        p1[i] = np.uint8((x >> np.uint64(8)) & np.uint64(255))
        p2[i] = np.uint8((x >> np.uint64(16)) & np.uint64(255))
        p3[i] = np.uint8((x >> np.uint64(24)) & np.uint64(255))
        p4[i] = np.uint8((x >> np.uint64(32)) & np.uint64(255))
        p5[i] = np.uint8((x >> np.uint64(40)) & np.uint64(255))
        p6[i] = np.uint8((x >> np.uint64(48)) & np.uint64(255))
        p7[i] = np.uint8(x >> np.uint64(56))


@nb.njit(nogil=True, cache=True, inline="always")
def _merge8_rows(p0, p1, p2, p3, p4, p5, p6, p7, w, r, q):
    """w[i] = the bytes p0[i] (lowest) .. p7[i] rotated right by r (q = 64 - r, or 0 for 0)."""
    for i in range(p0.shape[0]):
        x = np.uint64(p0[i]) | (np.uint64(p1[i]) << np.uint64(8)) | (np.uint64(p2[i]) << np.uint64(16)) \
            | (np.uint64(p3[i]) << np.uint64(24)) | (np.uint64(p4[i]) << np.uint64(32)) \
            | (np.uint64(p5[i]) << np.uint64(40)) | (np.uint64(p6[i]) << np.uint64(48)) \
            | (np.uint64(p7[i]) << np.uint64(56))
        w[i] = (x >> r) | (x << q)


@nb.njit(nogil=True, cache=True)
def _split(src, s, rot, planes):
    n = planes.shape[1]
    bits = 8 * s
    # 2- and 4-byte elements: whole-word loads into rows of their own, and the default rotations
    # (0, 1) as constants: shifts by a variable kept the loops from vectorizing (57 -> 13 us per
    # 512 KiB of F16, 48 -> 13 of F32; other rotations keep the scalar loop)
    if s == 2:
        w = src[:2 * n].view(np.uint16)
        p0, p1 = planes[0], planes[1]
        if rot == 0:
            _split2_rows(w, p0, p1, np.uint16(0), np.uint16(0))
        elif rot == 1:
            _split2_rows(w, p0, p1, np.uint16(1), np.uint16(15))
        else:
            _split2_rows(w, p0, p1, np.uint16(rot), np.uint16(16 - rot))
        return
    if s == 1 and rot == 0:     # one plane: a copy (the byte loop below took 1.3 ms per 512 KiB)
        _copy_bytes(planes[0], src[:n])
        return
    if s == 4:
        w32 = src[:4 * n].view(np.uint32)
        p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
        if rot == 0:
            _split4_rows(w32, p0, p1, p2, p3, np.uint32(0), np.uint32(0))
        elif rot == 1:
            _split4_rows(w32, p0, p1, p2, p3, np.uint32(1), np.uint32(31))
        else:
            _split4_rows(w32, p0, p1, p2, p3, np.uint32(rot), np.uint32(32 - rot))
        return
    if s == 8:      # F64, I64: the same with 8 rows (the byte loop below: 398 us per 512 KiB)
        w64 = src[:8 * n].view(np.uint64)
        if rot == 0:
            _split8_rows(w64, planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6],
                         planes[7], np.uint64(0), np.uint64(0))
        elif rot == 1:
            _split8_rows(w64, planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6],
                         planes[7], np.uint64(1), np.uint64(63))
        else:
            _split8_rows(w64, planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6],
                         planes[7], np.uint64(rot), np.uint64(64 - rot))
        return
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if bits == 64 else (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(n):
        v = np.uint64(0)
        for b in range(s):
            v |= np.uint64(src[s * i + b]) << np.uint64(8 * b)
        if rot:
            v = ((v << np.uint64(rot)) | (v >> np.uint64(bits - rot))) & mask
        for b in range(s):
            planes[b, i] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(255))


@nb.njit(nogil=True, cache=True)
def _merge(planes, s, rot, out):
    n = planes.shape[1]
    bits = 8 * s
    if s == 2:
        _merge2(planes[0], planes[1], rot, out)
        return
    if s == 4:
        _merge4(planes[0], planes[1], planes[2], planes[3], rot, out)
        return
    if s == 1 and rot == 0:     # one plane: a copy (the byte loop below took 1.2 ms per 512 KiB)
        _copy_bytes(out[:n], planes[0])
        return
    if s == 8:      # F64, I64 (the byte loop below: 308 us per 512 KiB)
        w64 = out[:8 * n].view(np.uint64)
        if rot == 0:
            _merge8_rows(planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6], planes[7],
                         w64, np.uint64(0), np.uint64(0))
        elif rot == 1:
            _merge8_rows(planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6], planes[7],
                         w64, np.uint64(1), np.uint64(63))
        else:
            _merge8_rows(planes[0], planes[1], planes[2], planes[3], planes[4], planes[5], planes[6], planes[7],
                         w64, np.uint64(rot), np.uint64(64 - rot))
        return
    mask = np.uint64(0xFFFFFFFFFFFFFFFF) if bits == 64 else (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(n):
        v = np.uint64(0)
        for b in range(s):
            v |= np.uint64(planes[b, i]) << np.uint64(8 * b)
        if rot:
            v = ((v >> np.uint64(rot)) | (v << np.uint64(bits - rot))) & mask
        for b in range(s):
            out[s * i + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(255))


_NT_STEP = 64          # values per _merge4_nt step: 256 output bytes, 4 whole cache lines
_NT_MIN = 1 << 14      # merges of at least this many values (64 KiB out) store non-temporally


def _make_merge4_nt():
    """Intrinsic merge4_nt(p0, p1, p2, p3, i, dst, rot): values i .. i + _NT_STEP - 1, byte i of
    each plane joined into a 32-bit word (p0 lowest), rotated right by rot (a funnel shift, so 0
    is no rotation), stored at the raw 64-byte-aligned address dst with non-temporal stores.

    Why: F32's merge writes the whole output once, from raw planes the decode never touched.
    Ordinary stores read every output line first (write-allocate) and the scalar loop did not
    vectorize: 26-28 us per 64K-value chunk from cold memory, 12-13 us this way (/tmp script).
    No bounds checks: the caller keeps i + _NT_STEP within the planes and dst's 256 bytes within
    its output."""
    m = _NT_STEP
    i8, i32 = ir.IntType(8), ir.IntType(32)
    vb, vw = ir.VectorType(i8, m), ir.VectorType(i32, m)

    @intrinsic
    def merge4_nt(typingctx, p0, p1, p2, p3, i, dst, rot):
        if not (all(isinstance(p, types.Array) and p.dtype == types.uint8 for p in (p0, p1, p2, p3))
                and isinstance(i, types.Integer) and isinstance(dst, types.Integer)
                and isinstance(rot, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            ii = context.cast(builder, args[4], signature.args[4], types.intp)
            v = None
            for k in range(4):
                a = context.make_array(signature.args[k])(context, builder, args[k])
                x = builder.zext(builder.load(builder.bitcast(builder.gep(a.data, [ii]), vb.as_pointer()),
                                              align=1), vw)
                if k:
                    x = builder.shl(x, ir.Constant(vw, [8 * k] * m))
                v = x if v is None else builder.or_(v, x)
            r = builder.trunc(context.cast(builder, args[6], signature.args[6], types.uint64), i32)
            rv = builder.shuffle_vector(builder.insert_element(ir.Constant(vw, None), r, ir.Constant(i32, 0)),
                                        ir.Constant(vw, None), ir.Constant(ir.VectorType(i32, m), [0] * m))
            fshr = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vw, [vw, vw, vw]),
                                                  f"llvm.fshr.v{m}i32")
            v = builder.call(fshr, [v, v, rv])
            ptr = builder.inttoptr(context.cast(builder, args[5], signature.args[5], types.uint64), vw.as_pointer())
            st = builder.store(v, ptr, align=64)
            st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(i32, 1)]))
            return context.get_dummy_value()
        return types.void(p0, p1, p2, p3, i, dst, rot), codegen
    return merge4_nt


_merge4_nt = _make_merge4_nt()


@intrinsic
def _store_fence(typingctx):
    """A full fence: non-temporal stores are weakly ordered, so a merge that used them ends with
    one before another thread may read its output (x86: mfence)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@nb.njit(nogil=True, cache=True)
def _merge4_range(p0, p1, p2, p3, rot, out, lo, hi):
    r = np.uint32(rot)
    for i in range(lo, hi):
        v = np.uint32(p0[i]) | (np.uint32(p1[i]) << np.uint32(8)) | \
            (np.uint32(p2[i]) << np.uint32(16)) | (np.uint32(p3[i]) << np.uint32(24))
        if rot:
            v = (v >> r) | (v << np.uint32(32 - rot))
        out[4 * i] = np.uint8(v & np.uint32(255))
        out[4 * i + 1] = np.uint8((v >> np.uint32(8)) & np.uint32(255))
        out[4 * i + 2] = np.uint8((v >> np.uint32(16)) & np.uint32(255))
        out[4 * i + 3] = np.uint8(v >> np.uint32(24))


@nb.njit(nogil=True, cache=True)
def _merge4(p0, p1, p2, p3, rot, out):
    """out[4i:4i+4] = the 4 planes' byte i, rotated right by rot. Large merges store whole cache
    lines non-temporally (_merge4_nt) between a scalar head (up to the first 64-byte boundary)
    and tail."""
    n = p0.shape[0]
    base = huffman._addr(out)
    if n < _NT_MIN or base % np.uint64(4) != 0 or out.strides[0] != 1 or p0.strides[0] != 1 \
            or p1.strides[0] != 1 or p2.strides[0] != 1 or p3.strides[0] != 1:
        _merge4_range(p0, p1, p2, p3, rot, out, 0, n)
        return
    head = np.int64((np.uint64(64) - base % np.uint64(64)) % np.uint64(64)) // 4
    stop = head + (n - head) // _NT_STEP * _NT_STEP
    _merge4_range(p0, p1, p2, p3, rot, out, 0, head)
    r = np.uint32(rot % 32)
    for i in range(head, stop, _NT_STEP):
        _merge4_nt(p0, p1, p2, p3, i, base + np.uint64(4 * i), r)
    _store_fence()
    _merge4_range(p0, p1, p2, p3, rot, out, stop, n)


@nb.njit(nogil=True, cache=True)
def _merge2(p0, p1, rot, out):
    n = p0.shape[0]
    r = np.uint32(rot)
    for i in range(n):
        v = np.uint32(p0[i]) | (np.uint32(p1[i]) << np.uint32(8))
        if rot:
            v = ((v >> r) | (v << np.uint32(16 - rot))) & np.uint32(0xFFFF)
        out[2 * i] = np.uint8(v & np.uint32(255))
        out[2 * i + 1] = np.uint8(v >> np.uint32(8))


@nb.njit(nogil=True, cache=True)
def _plane_counts(planes, counts):
    """counts[p, t] = histogram of plane p's bytes i with i % 4 == t (4 tables hide the latency
    of incrementing the same counter back to back)."""
    n = planes.shape[1]
    n4 = n - n % 4
    for p in range(planes.shape[0]):
        for i in range(0, n4, 4):
            counts[p, 0, planes[p, i]] += 1
            counts[p, 1, planes[p, i + 1]] += 1
            counts[p, 2, planes[p, i + 2]] += 1
            counts[p, 3, planes[p, i + 3]] += 1
        for i in range(n4, n):
            counts[p, 0, planes[p, i]] += 1


@nb.njit(nogil=True, cache=True)
def _size_planes(counts, sizes, lengths, low7, nseg):
    """For every plane p with bytes: sizes[p, 0] and lengths[p, 0] of its Huffman block (nseg
    segments), sizes[p, 1] and lengths[p, 1] of the block of its low 7 bits (counts in low7[p]);
    one compiled call instead of a Python round trip per block (8 per F32 chunk)."""
    for p in range(counts.shape[0]):
        for b in range(128):
            low7[p, b] = counts[p, b] + counts[p, b + 128]
        sizes[p, 0] = huffman._block_lengths_nb(counts[p], lengths[p, 0], nseg)
        sizes[p, 1] = huffman._block_lengths_nb(low7[p], lengths[p, 1], nseg)


@nb.njit(nogil=True, cache=True)
def _or_top_bits(plane, bits):
    """plane[i] |= bit i of `bits` (MSB-first) << 7: method 3's raw top bits (the whole groups as
    method 4's maps are ORed in)."""
    n = plane.shape[0]
    _unpack_map(bits, plane, np.uint64(0), 7, False)
    for i in range(n & ~7, n):
        plane[i] |= (np.uint8(bits[i >> 3]) << np.uint8(i & 7)) & np.uint8(128)


@nb.njit(nogil=True, cache=True, inline="always")
def _spread8(b):
    """Bit t of the byte b moved to bit 8 t (a big-endian store then puts bit 7 - i in byte i): the
    multiply places 7 bits without carries, the top bit is moved alone. 4x faster than a table."""
    x = np.uint64(b)
    return (((x & np.uint64(0x7F)) * np.uint64(0x0002040810204081)) & np.uint64(0x0101010101010101)) \
        | ((x >> np.uint64(7)) << np.uint64(56))


@nb.njit(nogil=True, cache=True, inline="always")
def _popcount8(x):
    k = 0
    for t in range(8):
        k += (x >> t) & 1
    return k


@nb.njit(nogil=True, cache=True)
def _bits_mask(counts):
    """(m, c) of method 4 for a plane with byte histogram `counts`: the bits that vary among the
    bytes present, and the value of the others."""
    orv = 0
    andv = 255
    for b in range(256):
        if counts[b]:
            orv |= b
            andv &= b
    if orv == 0 and andv == 255:    # no bytes
        andv = 0
    return orv ^ andv, andv


@nb.njit(nogil=True, cache=True)
def _pack_map(plane, q, mp):
    """mp[g] = bit q of plane[8 g .. 8 g + 7], first byte highest, for the whole groups of 8 (a
    multiply gathers one bit of each byte of a big-endian word; a loop of its own, 4x faster)."""
    sq = np.uint64(q)
    for g in range(plane.shape[0] >> 3):
        x = huffman._load_be64(plane, 8 * g)
        mp[g] = np.uint8((((x >> sq) & np.uint64(0x0101010101010101)) * np.uint64(0x0102040810204080))
                         >> np.uint64(56))


@nb.njit(nogil=True, cache=True)
def _pack_bits(plane, m, c, out, off):
    """Method 4's body of `plane` at out[off:]: m, c, then the map of every set bit of m."""
    n = plane.shape[0]
    nb8 = (n + 7) // 8
    out[off] = np.uint8(m)
    out[off + 1] = np.uint8(c)
    at = off + 2
    for q in range(8):
        if not (m >> q) & 1:
            continue
        _pack_map(plane, q, out[at:at + nb8])
        if n & 7:
            v = np.uint8(0)
            for i in range(n & ~7, n):
                v |= ((plane[i] >> np.uint8(q)) & np.uint8(1)) << np.uint8(7 - (i & 7))
            out[at + (n >> 3)] = v
        at += nb8


@nb.njit(nogil=True, cache=True)
def _unpack_map(mp, plane, fill, q, first):
    """plane[8 g .. 8 g + 7] = (fill, or those bytes if not first) | the bits of mp[g] at bit q,
    for the whole groups of 8: a loop of its own (inside the caller's loop it ran 4x slower; 4
    maps in one pass ran slower than 4 passes of one, a constant shift per bit no faster)."""
    sq = np.uint64(q)
    if first:
        for g in range(plane.shape[0] >> 3):
            huffman._store_be64(plane, 8 * g, fill | (_spread8(mp[g]) << sq))
    else:
        for g in range(plane.shape[0] >> 3):
            huffman._store_be64(plane, 8 * g, huffman._load_be64(plane, 8 * g) | (_spread8(mp[g]) << sq))


@nb.njit(nogil=True, cache=True)
def _unpack_8maps(m0, m1, m2, m3, m4, m5, m6, m7, ones, plane, c):
    """plane[8 g + i] = c | (bit 7 - i of mq[g]) & ones[q] at bit q, q = 0..7 (ones[q] 0 for a
    bit that does not vary, whose map is any other), for the whole groups of 8: one pass that
    vectorizes over byte lanes, for planes of many varying bits (7 maps: 5.9 us per 64 KiB, one
    pass per map 10.5; the maps as offsets into one array did not vectorize: 47 us)."""
    e0, e1, e2, e3, e4, e5, e6, e7 = ones[0], ones[1], ones[2], ones[3], ones[4], ones[5], ones[6], ones[7]
    for g in range(plane.shape[0] >> 3):
        b0, b1, b2, b3, b4, b5, b6, b7 = m0[g], m1[g], m2[g], m3[g], m4[g], m5[g], m6[g], m7[g]
        for i in range(8):
            s = np.uint8(7 - i)
            plane[8 * g + i] = c | ((b0 >> s) & e0) | (((b1 >> s) & e1) << np.uint8(1)) \
                | (((b2 >> s) & e2) << np.uint8(2)) | (((b3 >> s) & e3) << np.uint8(3)) \
                | (((b4 >> s) & e4) << np.uint8(4)) | (((b5 >> s) & e5) << np.uint8(5)) \
                | (((b6 >> s) & e6) << np.uint8(6)) | (((b7 >> s) & e7) << np.uint8(7))


# planes with at least this many varying bits unpack in one pass over 8 maps (absent ones masked)
_ONE_PASS_BITS = 5


@nb.njit(nogil=True, cache=True)
def _unpack_bits(body, plane):
    """Decode method 4's body (its length and c & m == 0 checked by the caller) into plane:
    0, or 1 if a map has bits set past n."""
    n = plane.shape[0]
    nb8 = (n + 7) // 8
    m = body[0]
    c = np.uint8(body[1])
    n8 = n >> 3
    if _popcount8(m) >= _ONE_PASS_BITS:
        offs = np.full(8, 2, np.int64)      # a bit that does not vary reads the first map, masked out
        ones = np.zeros(8, np.uint8)
        at = 2
        for q in range(8):
            if (m >> q) & 1:
                if n & 7 and body[at + nb8 - 1] & np.uint8(0xFF >> (n & 7)):
                    return 1
                offs[q] = at
                ones[q] = 1
                at += nb8
        _unpack_8maps(body[offs[0]:offs[0] + nb8], body[offs[1]:offs[1] + nb8], body[offs[2]:offs[2] + nb8],
                      body[offs[3]:offs[3] + nb8], body[offs[4]:offs[4] + nb8], body[offs[5]:offs[5] + nb8],
                      body[offs[6]:offs[6] + nb8], body[offs[7]:offs[7] + nb8], ones, plane, c)
        for i in range(8 * n8, n):
            v = c
            for q in range(8):
                v |= ((body[offs[q] + n8] >> np.uint8(7 - (i & 7))) & ones[q]) << np.uint8(q)
            plane[i] = v
        return 0
    first = True
    at = 2
    for q in range(8):
        if not (m >> q) & 1:
            continue
        mp = body[at:at + nb8]
        if n & 7 and mp[nb8 - 1] & np.uint8(0xFF >> (n & 7)):
            return 1
        _unpack_map(mp, plane, np.uint64(c) * np.uint64(0x0101010101010101), q, first)
        for i in range(8 * n8, n):
            bit = ((mp[n8] >> np.uint8(7 - (i & 7))) & np.uint8(1)) << np.uint8(q)
            plane[i] = (c if first else plane[i]) | bit
        first = False
        at += nb8
    if first:           # m == 0: a constant plane
        for i in range(n):
            plane[i] = c
    return 0


# Chunks of 2-byte elements with at least this many values count their planes with one 64K-entry
# histogram of the whole (rotated) value: one increment per value instead of one per plane byte,
# 1.5x faster on a 512 KiB chunk; below it, zeroing the 256 KiB of counters costs more.
_HIST16_MIN = 1 << 14


@nb.njit(nogil=True, cache=True)
def _count16(v16, rot, hist, counts):
    """counts[0], counts[1] = byte counts of the planes of 2-byte elements (v16: the elements as
    uint16), from one histogram of the rotated values; a pass of its own (fused into _split, the
    plane stores slowed the counting 2.5x)."""
    hist[:] = 0
    if rot:
        r = np.uint32(rot)
        for i in range(v16.shape[0]):
            v = np.uint32(v16[i])
            hist[((v << r) | (v >> np.uint32(16 - rot))) & np.uint32(0xFFFF)] += 1
    else:
        for i in range(v16.shape[0]):
            hist[v16[i]] += 1
    for hi in range(256):
        total = np.int64(0)
        for lo in range(256):
            x = np.int64(hist[256 * hi + lo])
            total += x
            counts[0, lo] += x
        counts[1, hi] = total


# A Huffman plane is kept only if it is at most 95 % of the raw plane (ZipNN's default
# compression_threshold, for the same reason): a plane of near-random bytes costs a Huffman pass
# at 1.7 codes per lookup, 5x a raw plane's decode, to save 1-3 % of it. On MiniLM FP32 (word
# embedding chunks mixing full-precision rows with rows whose low mantissa bits are zero) 2
# chunks go raw, for 0.002 points of ratio (81.888 -> 81.890 %).
_HUFFMAN_KEEP_NUM, _HUFFMAN_KEEP_DEN = 19, 20


@nb.njit(nogil=True, cache=True)
def _plan(chunk, v16, s, rot, planes, hist, counts, sizes, lengths, low7, methods, lens, nseg):
    """The analysis half of encoding a chunk, in one compiled call: split into planes, count, size
    every plane's Huffman and huffman7 blocks, and pick per plane the smallest of raw, huffman,
    huffman7 and bits (huffman7, then bits, when no larger than the best: they decode faster) into
    methods/lens.
    v16: the chunk's elements as uint16 when s == 2 (else unused); nseg: the blocks' segments."""
    n = planes.shape[1]
    counts[:] = 0
    _split(chunk, s, rot, planes)
    if s == 2 and n >= _HIST16_MIN:
        _count16(v16, rot, hist, counts)
    else:
        sub = np.zeros((s, 4, 256), np.int64)
        _plane_counts(planes, sub)
        for p in range(s):
            for t in range(4):
                for b in range(256):
                    counts[p, b] += sub[p, t, b]
    sizes[:] = 0
    if n:
        _size_planes(counts, sizes, lengths, low7, nseg)
    for p in range(s):
        methods[p] = RAW
        lens[p] = n
        if n and sizes[p, 0] > 0:
            if sizes[p, 0] < lens[p]:
                methods[p] = HUFFMAN
                lens[p] = sizes[p, 0]
            h7 = sizes[p, 1] + (n + 7) // 8
            if h7 <= lens[p]:
                methods[p] = HUFFMAN7
                lens[p] = h7
            if methods[p] != RAW and _HUFFMAN_KEEP_DEN * lens[p] > _HUFFMAN_KEEP_NUM * n:
                methods[p] = RAW        # saves under 5 %: not worth a Huffman pass
                lens[p] = n
        if n:
            m, c = _bits_mask(counts[p])
            nbits = 2 + _popcount8(m) * ((n + 7) // 8)
            if nbits <= lens[p]:        # no larger than the best: it decodes at memory speed
                methods[p] = BITS
                lens[p] = nbits


@nb.njit(nogil=True, cache=True)
def _split_top_bits(plane, out, off):
    """Method 3's split of a plane: bit 7 of plane[i] to bit 7 - i % 8 of out[off + i // 8] (as
    np.packbits(plane >> 7)), and plane[i] &= 127 in place; 8 bytes per step (a multiply
    gathers the 8 top bits of a big-endian word into one byte, first byte highest)."""
    n = plane.shape[0]
    for g in range(n >> 3):
        x = huffman._load_be64(plane, 8 * g)
        out[off + g] = np.uint8((((x >> np.uint64(7)) & np.uint64(0x0101010101010101))
                                 * np.uint64(0x0102040810204080)) >> np.uint64(56))
        huffman._store_be64(plane, 8 * g, x & np.uint64(0x7F7F7F7F7F7F7F7F))
    if n & 7:
        m = np.uint8(0)
        for i in range(n & ~7, n):
            m |= (plane[i] >> np.uint8(7)) << np.uint8(7 - (i & 7))
            plane[i] &= np.uint8(127)
        out[off + (n >> 3)] = m


@nb.njit(nogil=True, cache=True)
def _copy_bytes(dst, src):
    """dst[:] = src for equal-length byte arrays. A loop over two whole arrays compiles to a
    vectorized copy (5 us per 256 KiB); `dst[a:b] = src` took 80 us and compiled numba's
    shape-error formatting (2.5 s), `dst[off + i] = src[i]` 195 us (/tmp script)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@nb.njit(nogil=True, cache=True)
def _write(planes, methods, lens, counts, low7, lengths, tail, out, nseg):
    """The writing half: the plane table and every raw/huffman/huffman7/bits plane (zstd planes are
    left for the caller), then the tail; out holds the whole payload + 8 spare bytes. Returns the
    payload size, or -1 - p if plane p's block did not come out at its planned size. Masks the
    huffman7 planes to their low 7 bits in place."""
    s = planes.shape[0]
    n = planes.shape[1]
    off = 5 * s
    for p in range(s):
        out[5 * p] = np.uint8(methods[p])
        for q in range(4):
            out[5 * p + 1 + q] = np.uint8((lens[p] >> (8 * q)) & 255)
    for p in range(s):
        m = methods[p]
        end = off + lens[p]
        if m == HUFFMAN:
            if huffman._write_block(planes[p], counts[p], lengths[p, 0], out, off, nseg) != end:
                return -1 - p
        elif m == HUFFMAN7:
            nb8 = (n + 7) // 8
            row = planes[p]
            _split_top_bits(row, out, off)
            if huffman._write_block(row, low7[p], lengths[p, 1], out, off + nb8, nseg) != end:
                return -1 - p
        elif m == RAW:
            _copy_bytes(out[off:end], planes[p])
        elif m == BITS:
            bm, bc = _bits_mask(counts[p])
            _pack_bits(planes[p], bm, bc, out, off)
        off = end
    for i in range(tail.shape[0]):
        out[off + i] = tail[i]
    return off + tail.shape[0]


class _Scratch(threading.local):
    """Per-thread work arrays of the encoder and decoder, reused across chunks: new ones for every
    chunk cost page faults (about as much as the encoding itself without a malloc that keeps
    freed memory). The views for a chunk size are cached: most chunks of a file share one."""

    def __init__(self):
        self.flat = np.empty(0, np.uint8)
        self.hist = np.empty(1 << 16, np.int32)
        self.views: dict[tuple[int, int], tuple] = {}

    def get(self, s: int, n: int):
        got = self.views.get((s, n))
        if got is None and s * n > _SCRATCH_MAX:    # a huge chunk: not kept for the thread's lifetime
            return (np.empty((s, n), np.uint8), np.zeros(1 << 16, np.int32)) + self._small(s)
        if got is None:
            if self.flat.size < s * n:
                self.flat = np.empty(max(s * n, 1 << 19), np.uint8)
                self.views.clear()
            if len(self.views) > 64:
                self.views.clear()
            got = self.views[(s, n)] = (self.flat[:s * n].reshape(s, n), self.hist) + self._small(s)
        return got

    @staticmethod
    def _small(s: int):
        """counts, sizes, lengths, low7 (its upper half stays zero), methods, lens."""
        return (np.zeros((s, 256), np.int64), np.zeros((s, 2), np.int64), np.zeros((s, 2, 256), np.uint8),
                np.zeros((s, 256), np.int64), np.zeros(s, np.int64), np.zeros(s, np.int64))


# larger chunks (the default is 512 KiB) get arrays of their own, freed with them
_SCRATCH_MAX = 1 << 23
_SCRATCH = _Scratch()
_NO_U16 = np.empty(0, np.uint16)


_WIDE_STEP = 32     # values per _merge32 step (one 512-bit vector of 16-bit words)


def _make_merge32(with_top: bool):
    """Intrinsic merge(top, low, out16, i) for 32 values from i (a multiple of 8): out16 keeps its
    high byte, takes plane 0's byte from low[i:], and with_top ORs in bit 15 from method 3's map
    (top[i // 8:], value i + 8k + j from bit 7 - j of byte k: the 4 bytes spread over the lanes by
    a shuffle, moved to bit 15 by a per-lane multiply). One vector pass: scalar loops for the low
    byte and the top bit took 10 and 25 us per 256K values."""
    m = _WIDE_STEP
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    vlow, vtop, vval = ir.VectorType(i8, m), ir.VectorType(i8, m // 8), ir.VectorType(i16, m)

    @intrinsic
    def merge(typingctx, top, low, out16, i):
        if not (isinstance(top, types.Array) and top.dtype == types.uint8 and isinstance(low, types.Array)
                and low.dtype == types.uint8 and isinstance(out16, types.Array)
                and out16.dtype == types.uint16 and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            t = context.make_array(signature.args[0])(context, builder, args[0])
            lo = context.make_array(signature.args[1])(context, builder, args[1])
            o = context.make_array(signature.args[2])(context, builder, args[2])
            ii = context.cast(builder, args[3], signature.args[3], types.intp)
            vp = builder.bitcast(builder.gep(o.data, [ii]), vval.as_pointer())
            v = builder.and_(builder.load(vp, align=2), ir.Constant(vval, [0xFF00] * m))
            x = builder.load(builder.bitcast(builder.gep(lo.data, [ii]), vlow.as_pointer()), align=1)
            v = builder.or_(v, builder.zext(x, vval))
            if with_top:
                g = builder.lshr(ii, ir.Constant(ii.type, 3))
                tb = builder.load(builder.bitcast(builder.gep(t.data, [g]), vtop.as_pointer()), align=1)
                spread = builder.zext(builder.shuffle_vector(tb, ir.Constant(vtop, None), ir.Constant(
                    ir.VectorType(i32, m), [j // 8 for j in range(m)])), vval)
                bits = builder.mul(spread, ir.Constant(vval, [1 << (8 + j % 8) for j in range(m)]))
                v = builder.or_(v, builder.and_(bits, ir.Constant(vval, [0x8000] * m)))
            builder.store(v, vp, align=2)
            return context.get_dummy_value()
        return types.void(top, low, out16, i), codegen
    return merge


_merge32, _merge32_top = _make_merge32(False), _make_merge32(True)


@nb.njit(nogil=True, cache=True)
def _merge_wide(out16, low, top, rot):
    """The wide decode's merge (2-byte elements, plane 1 decoded into out16 as symbol << 8 over
    garbage): the low byte from plane 0, bit 15 from method 3's top-bit map (if top is not empty),
    then the rotation undone; on words still in cache from the decode."""
    n = out16.shape[0]
    nv = n - n % _WIDE_STEP
    if top.shape[0]:
        for i in range(0, nv, _WIDE_STEP):
            _merge32_top(top, low, out16, i)
        for i in range(nv, n):
            out16[i] = (out16[i] & np.uint16(0xFF00)) | np.uint16(low[i]) \
                | ((np.uint16(top[i >> 3]) << np.uint16(8 + (i & 7))) & np.uint16(0x8000))
    else:
        for i in range(0, nv, _WIDE_STEP):
            _merge32(top, low, out16, i)
        for i in range(nv, n):
            out16[i] = (out16[i] & np.uint16(0xFF00)) | np.uint16(low[i])
    if rot:
        r, q = np.uint16(rot), np.uint16(16 - rot)
        for i in range(n):
            out16[i] = (out16[i] >> r) | (out16[i] << q)


_NEEDS_ZSTD = 1
_ERR_SHORT, _ERR_METHOD, _ERR_RAWLEN, _ERR_PAST, _ERR_TOTAL, _ERR_TOPMAP = 2, 3, 4, 5, 6, 7
_ERR_BITS, _ERR_BITSPAD = 8, 9
_ERR_PLANE = 1000      # + 100 * plane + block status
_LAYOUT_TEXT = {_ERR_SHORT: "payload shorter than its plane table", _ERR_METHOD: "a plane has an unknown method",
                _ERR_RAWLEN: "a raw plane has the wrong length", _ERR_PAST: "a plane runs past the payload end",
                _ERR_TOTAL: "payload size differs from what its plane table implies",
                _ERR_TOPMAP: "a huffman7 plane is shorter than its top-bit map",
                _ERR_BITS: "a bits plane's length does not match its mask, or its base has masked bits set",
                _ERR_BITSPAD: "a bits plane has bits set past the plane's end"}


def _make_chunk_decoder(nseg, kind, has_wide):
    """The chunk decoder for Huffman blocks of nseg segments, whose block decoder is compiled for
    tables of `kind` bits (huffman._block_kind: every plane of a chunk of n values has n symbols),
    with or without the wide path: (buf, s, rot, planes, out) -> 0, _NEEDS_ZSTD (nothing
    written), or an error code (_ERR_*); a chunk without zstd planes decodes in one call. The
    three are closure constants, so only the kernels this kind of chunk needs compile."""
    block = huffman.table_index(nseg, kind or huffman.BLOCK_LUT_BITS[0])    # its block decoder (generic: any size)

    @huffman.njit_named(f"_decode_chunk_s{nseg}_l{kind}_w{int(has_wide)}")
    def decode_chunk(buf, s, rot, planes, out):
        size = buf.shape[0]
        n = planes.shape[1]
        t = out.shape[0] - n * s
        if size < 5 * s:
            return _ERR_SHORT
        offs = np.empty(s, np.int64)     # each plane's body: offset in buf and length
        lens = np.empty(s, np.int64)
        off = 5 * s
        zstd = False
        for p in range(s):
            m = buf[5 * p]
            ln = np.int64(buf[5 * p + 1]) | (np.int64(buf[5 * p + 2]) << 8) | (np.int64(buf[5 * p + 3]) << 16) \
                | (np.int64(buf[5 * p + 4]) << 24)
            if m > BITS:
                return _ERR_METHOD
            if m == RAW and ln != n:
                return _ERR_RAWLEN
            if off + ln > size:
                return _ERR_PAST
            if m == BITS and (ln < 2 or ln != 2 + _popcount8(buf[off]) * ((n + 7) // 8)
                              or buf[off] & buf[off + 1]):
                return _ERR_BITS
            if m == HUFFMAN7 and ln < (n + 7) // 8:
                return _ERR_TOPMAP
            if m == ZSTD:
                zstd = True
            offs[p] = off
            lens[p] = ln
            off += ln
        if off + t != size:
            return _ERR_TOTAL
        if zstd:
            return _NEEDS_ZSTD
        if has_wide and s == 2 and n >= huffman.WIDE_BLOCK_MIN and buf[0] == RAW \
                and (buf[5] == HUFFMAN or buf[5] == HUFFMAN7):
            # F16's usual chunk (a raw low byte, a coded high one): the high plane decodes straight
            # into the output words, whose cache lines the compute-bound decode then pulls in (a
            # later merge writing them cold cost 10 % of the chunk); the raw plane is prefetched
            nb8 = (n + 7) // 8 if buf[5] == HUFFMAN7 else 0
            low = buf[offs[0]:offs[0] + n]
            out16 = out[:2 * n].view(np.uint16)
            st = huffman.WIDE_BLOCK_DECODERS[nseg](buf[offs[1] + nb8:offs[1] + lens[1]], out16, 8, low)
            if st != 0:
                return _ERR_PLANE + 100 + st
            _merge_wide(out16, low, buf[offs[1]:offs[1] + nb8], rot)
            for i in range(t):
                out[2 * n + i] = buf[size - t + i]
            return 0
        # Huffman planes decode into `planes`; raw planes are read in place by the merge, so while a
        # plane decodes (compute-bound) the raw planes are prefetched: all of them during the first
        # Huffman plane (in practice the only one)
        src = np.empty(s, np.int64)      # per plane: -1 = planes[p], else its offset in buf
        raw_lo = size
        raw_hi = 0
        for p in range(s):
            if buf[5 * p] == RAW:
                src[p] = offs[p]
                raw_lo = min(raw_lo, offs[p])
                raw_hi = max(raw_hi, offs[p] + lens[p])
            else:
                src[p] = -1
        direct = s == 1 and rot == 0        # one plane, no rotation: decoded straight into out
        for p in range(s):
            dst = out[:n] if direct else planes[p]
            if src[p] < 0 and buf[5 * p] == BITS:
                if _unpack_bits(buf[offs[p]:offs[p] + lens[p]], dst):
                    return _ERR_BITSPAD
            elif src[p] < 0:
                off = offs[p]
                nb8 = (n + 7) // 8 if buf[5 * p] == HUFFMAN7 else 0     # method 3: top bits first
                body = buf[off + nb8:off + lens[p]]
                st = huffman.BLOCK_DECODERS[block](body, dst, buf[raw_lo:raw_hi] if raw_lo < raw_hi else body)
                raw_hi = raw_lo
                if st != 0:
                    return _ERR_PLANE + 100 * p + st
                if nb8:
                    _or_top_bits(dst, buf[off:off + nb8])
        if direct:
            if src[0] >= 0:
                _copy_bytes(out[:n], buf[src[0]:src[0] + n])
        elif s == 4:
            _merge4(planes[0] if src[0] < 0 else buf[src[0]:src[0] + n],
                    planes[1] if src[1] < 0 else buf[src[1]:src[1] + n],
                    planes[2] if src[2] < 0 else buf[src[2]:src[2] + n],
                    planes[3] if src[3] < 0 else buf[src[3]:src[3] + n], rot, out)
        elif s == 2:
            _merge2(planes[0] if src[0] < 0 else buf[src[0]:src[0] + n],
                    planes[1] if src[1] < 0 else buf[src[1]:src[1] + n], rot, out)
        else:
            for p in range(s):
                if src[p] >= 0:
                    _copy_bytes(planes[p], buf[src[p]:src[p] + n])
            _merge(planes, s, rot, out)
        for i in range(t):
            out[n * s + i] = buf[size - t + i]
        return 0
    return decode_chunk


_CHUNK_DECODERS: dict = {}      # by (nseg, block kind, wide)
_BY_CHUNK: dict = {}            # the same decoders by (nseg, s, n)


def chunk_decoder(nseg: int, s: int, n: int):
    """The compiled decoder for chunks of n values of s bytes whose Huffman blocks have nseg (1..8)
    segments."""
    key = (nseg, s, n)
    dec = _BY_CHUNK.get(key)
    if dec is None:
        wide = s == 2 and n >= huffman.WIDE_BLOCK_MIN and huffman.WIDE_BLOCK_DECODERS[nseg] is not None
        kind = (nseg, huffman._block_kind(nseg, huffman._block_lut_bits(n)), wide)
        dec = _CHUNK_DECODERS.get(kind)
        if dec is None:
            dec = _CHUNK_DECODERS[kind] = _make_chunk_decoder(*kind)
        if len(_BY_CHUNK) > 256:
            _BY_CHUNK.clear()
        _BY_CHUNK[key] = dec
    return dec


def _default_rotate(dtype: str) -> int:
    d = lookup(dtype)
    if d.name in ("BF16", "F32", "F64"):
        return 1
    return 0


@register_codec
class ByteGroup(Codec):
    codec_id = "bytegroup"
    description = "byte planes (exponent rotated into one byte) with per-plane Huffman/zstd/raw (ZipNN layout)"
    max_expansion = 1.01
    # Per-chunk tables: ZipNN's 256 KiB chunk for most dtypes. 2-byte elements get 512 KiB (as
    # many values as an F32 chunk): measured on MiniLM/Whisper F16, 84.733/85.491 % against
    # 84.741/85.500 % and 5-7 % faster decoding; on F32, 512 KiB gave 81.908 % against 81.876 %.
    default_chunk_size = 1 << 18

    def __init__(self, itemsize: int = 1, rotate: int = 0, zstd_level: int = 3, zstd: str = "auto",
                 segments: int | None = None):
        if itemsize not in (1, 2, 4, 8):
            raise ValueError(f"itemsize must be 1, 2, 4 or 8, got {itemsize!r}")
        if not isinstance(rotate, int) or not 0 <= rotate < 8 * itemsize:
            raise ValueError(f"rotate must be in [0, {8 * itemsize}), got {rotate!r}")
        if not isinstance(zstd_level, int) or not -7 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in [-7, 22], got {zstd_level!r}")
        if zstd not in ("auto", "always", "never"):
            raise ValueError(f"zstd must be 'auto', 'always' or 'never', got {zstd!r}")
        self.itemsize, self.rotate, self.zstd_level, self.zstd = itemsize, rotate, zstd_level, zstd
        # None: the writer's default; a stored config without the key reads as 4 (from_config)
        self.segments = huffman.checked_segments(segments)
        self.segments_given = segments is not None

    def fit(self, source, dtype: str) -> "ByteGroup":
        d = lookup(dtype)
        zmode = self.zstd
        if zmode == "auto":
            zmode = "never" if d.is_float else "always"
        fitted = ByteGroup(d.itemsize, _default_rotate(dtype) if d.itemsize > 1 else 0, self.zstd_level, zmode,
                           self.segments if self.segments_given else huffman.DEFAULT_SEGMENTS)
        if d.itemsize == 2:
            fitted.default_chunk_size = 1 << 19
        return fitted

    def chunk_alignment(self) -> int:
        return self.itemsize

    def get_config(self) -> dict[str, Any]:
        cfg = {"id": self.codec_id, "itemsize": self.itemsize, "rotate": self.rotate,
               "zstd_level": self.zstd_level, "zstd": self.zstd}
        if self.segments != huffman.LEGACY_SEGMENTS:    # 4: the 1.0 layout, byte for byte
            cfg["segments"] = self.segments
        return cfg

    @classmethod
    def from_config(cls, config):
        params = {k: v for k, v in config.items() if k != "id"}
        unknown = set(params) - {"itemsize", "rotate", "zstd_level", "zstd", "segments"}
        if unknown:
            raise FormatError(f"bytegroup codec: unknown config keys {sorted(unknown)}")
        return huffman.from_config_with_segments(cls, params)

    # -- chunk level ---------------------------------------------------------------------
    def _planes(self, chunk: np.ndarray):
        s = self.itemsize
        n = chunk.size // s
        planes = np.empty((s, n), np.uint8)
        _split(chunk, s, self.rotate, planes)
        return planes, chunk[n * s:]

    def encode(self, chunk: np.ndarray) -> bytes:
        return self.encode_buffer(chunk).tobytes()

    def encode_buffer(self, chunk: np.ndarray) -> np.ndarray:
        """`encode` as a uint8 array (the container writes it without another copy). Two
        compiled, GIL-free calls (_plan, _write); only zstd candidates run in between."""
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        s = self.itemsize
        n = chunk.size // s
        planes, hist, counts, sizes, lengths, low7, methods, lens = _SCRATCH.get(s, n)
        v16 = chunk[:2 * n].view("<u2") if s == 2 else _NO_U16
        _plan(chunk, v16, s, self.rotate, planes, hist, counts, sizes, lengths, low7, methods, lens, self.segments)
        zs = {}
        if self.zstd != "never" and n:
            for p in range(s):
                z = compress_bytes(planes[p], self.zstd_level)
                if len(z) < lens[p]:
                    methods[p], lens[p], zs[p] = ZSTD, len(z), z
        tail = chunk[n * s:]
        out = np.empty(5 * s + int(lens.sum()) + tail.size + 8, np.uint8)
        end = _write(planes, methods, lens, counts, low7, lengths, tail, out, self.segments)
        if end < 0:
            raise RuntimeError(f"bytegroup: plane {-1 - end} did not encode to its planned size")
        for p, z in zs.items():
            off = 5 * s + int(lens[:p].sum())
            out[off:off + len(z)] = np.frombuffer(z, np.uint8)
        return out[:end]

    def _layout(self, buf: np.ndarray, total: int, what: str):
        s = self.itemsize
        n = total // s
        t = total - n * s
        if buf.size < 5 * s:
            raise FormatError(f"{what}: payload of {buf.size} bytes is shorter than its {5 * s}-byte header")
        entries = []
        off = 5 * s
        for p in range(s):
            m = int(buf[5 * p])
            ln = int(buf[5 * p + 1:5 * p + 5].view("<u4")[0])
            if m not in _METHOD_NAMES:
                raise FormatError(f"{what}: plane {p} has unknown method {m}")
            if m == RAW and ln != n:
                raise FormatError(f"{what}: raw plane {p} holds {ln} bytes, expected {n}")
            if m == HUFFMAN7 and ln < (n + 7) // 8:
                raise FormatError(f"{what}: huffman7 plane {p} ({ln} bytes) is shorter than its "
                                  f"{(n + 7) // 8}-byte top-bit map")
            if off + ln > buf.size:
                raise FormatError(f"{what}: plane {p} ({ln} bytes at {off}) runs past the payload end {buf.size}")
            if m == BITS:
                bm, bc = (int(buf[off]), int(buf[off + 1])) if ln >= 2 else (0, 0)
                want = 2 + bin(bm).count("1") * ((n + 7) // 8)
                if ln != want or bm & bc:
                    raise FormatError(f"{what}: bits plane {p} ({ln} bytes, mask {bm:#04x}, base {bc:#04x}) "
                                      f"should be {want} bytes with no masked bit in its base")
            entries.append((m, off, ln))
            off += ln
        if off + t != buf.size:
            raise FormatError(f"{what}: payload is {buf.size} bytes, its header implies {off + t}")
        return entries, n, t

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        if not out.flags.c_contiguous:      # the kernels store whole words: decode, then copy
            out[:] = self.decode(encoded, np.empty(out.size, np.uint8))
            return out
        what = "bytegroup chunk"
        buf = np.frombuffer(encoded, np.uint8)
        s = self.itemsize
        n = out.size // s
        planes = _SCRATCH.get(s, n)[0]      # per thread (new memory per chunk costs page faults)
        st = chunk_decoder(self.segments, s, n)(buf, s, self.rotate, planes, out)
        if st == _NEEDS_ZSTD:
            return self._decode_py(buf, planes, out, what)
        if st != 0:
            if st >= _ERR_PLANE:
                p, code = divmod(st - _ERR_PLANE, 100)
                raise FormatError(f"{what} plane {p} (Huffman block) is corrupt: "
                                  f"{huffman.BLOCK_STATUS_TEXT.get(code, code)}")
            raise FormatError(f"{what}: {_LAYOUT_TEXT.get(st, st)} (payload of {buf.size} bytes for "
                              f"{out.size} decoded bytes)")
        return out

    def _decode_py(self, buf, planes, out, what):
        entries, n, t = self._layout(buf, out.size, what)
        s = self.itemsize
        for p, (m, off, ln) in enumerate(entries):
            body = buf[off:off + ln]
            if m == RAW:
                planes[p] = body
            elif m == HUFFMAN:
                huffman.decode_block(body, planes[p], f"{what} plane {p}", self.segments)
            elif m == HUFFMAN7:
                nb8 = (n + 7) // 8
                huffman.decode_block(body[nb8:], planes[p], f"{what} plane {p}", self.segments)
                _or_top_bits(planes[p], body[:nb8])
            elif m == BITS:
                if _unpack_bits(body, planes[p]):
                    raise FormatError(f"{what}: bits plane {p} has bits set past the plane's end")
            else:
                decompress_into(body, planes[p], f"{what} plane {p} (zstd)")
        _merge(planes, s, self.rotate, out)
        if t:
            out[n * s:] = buf[buf.size - t:]
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        planes, _ = self._planes(d)
        try:
            entries, n, t = self._layout(np.frombuffer(encoded, np.uint8), d.size, "bytegroup chunk")
        except FormatError:
            return super().streams(decoded, encoded)
        return [StreamStat(f"plane{p}({_METHOD_NAMES[m]})", n, byte_entropy_bits(planes[p]), 8 * ln)
                for p, (m, off, ln) in enumerate(entries)]
