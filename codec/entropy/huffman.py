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

Decoding is table-driven: a `LUT_BITS`-bit lookup resolves up to 4 whole codes at once (unconditional
4-symbol stores), 32-bit big-endian refills into a 64-bit buffer, and a canonical slow path for codes
longer than the lookup. Every refill is bounds-checked, every step consumes at least one bit, and the
decoder reports an error status instead of reading or writing out of bounds; `decode` raises
`FormatError`. All kernels are `nogil` so chunks decode in parallel threads.
"""
from __future__ import annotations

import threading

import numba as nb
import numpy as np

from ..errors import FormatError

MAX_CODE_LEN = 32
LUT_BITS = 11
LUT_SYMS = 4

# decode status codes
OK = 0
ERR_EXHAUSTED = 1      # ran past the end of the stream's bytes
ERR_BAD_CODE = 2       # a bit pattern that matches no code
ERR_LENGTH = 3         # decoded all symbols but consumed a different number of bits than declared

_STATUS_TEXT = {
    ERR_EXHAUSTED: "bitstream ends before all symbols are decoded",
    ERR_BAD_CODE: "bit pattern matches no Huffman code",
    ERR_LENGTH: "bit count differs from the declared length",
}


# ---------------------------------------------------------------------------------------------
# code construction
# ---------------------------------------------------------------------------------------------
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
    # stable sort by count (argsort kind='mergesort' is stable; syms already ascending)
    cnt = np.empty(used, np.int64)
    for i in range(used):
        cnt[i] = counts[syms[i]]
    order = np.argsort(cnt, kind="mergesort")
    leaf_w = np.empty(used, np.int64)
    leaf_s = np.empty(used, np.int64)
    for i in range(used):
        leaf_w[i] = cnt[order[i]]
        leaf_s[i] = syms[order[i]]
    # nodes: 0..used-1 leaves, used.. internal
    total = 2 * used - 1
    parent = np.full(total, -1, np.int64)
    node_w = np.empty(used - 1, np.int64)
    li = 0
    ni = 0   # next internal node to consume
    nn = 0   # internal nodes created
    for k in range(used - 1):
        pick = np.empty(2, np.int64)
        wsum = 0
        for t in range(2):
            take_leaf = False
            if li < used and (ni >= nn or leaf_w[li] <= node_w[ni]):
                take_leaf = True
            if take_leaf:
                pick[t] = li
                wsum += leaf_w[li]
                li += 1
            else:
                pick[t] = used + ni
                wsum += node_w[ni]
                ni += 1
        node_w[nn] = wsum
        parent[pick[0]] = used + nn
        parent[pick[1]] = used + nn
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
    order = np.argsort(c, kind="mergesort")
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


def validate_lengths(lengths, max_len: int, what: str = "Huffman table") -> np.ndarray:
    """Check a code-length table (Kraft sum <= 1, lengths <= max_len); return it as uint8."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or lengths.size > 65536:
        raise FormatError(f"{what}: expected 1..65536 code lengths, got shape {lengths.shape}")
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise FormatError(f"{what}: max code length {max_len} outside [1, {MAX_CODE_LEN}]")
    if lengths.min() < 0 or lengths.max() > max_len:
        raise FormatError(f"{what}: code lengths must lie in [0, {max_len}], got "
                          f"[{int(lengths.min())}, {int(lengths.max())}]")
    l64 = lengths.astype(np.int64)
    kraft = int(np.sum(np.where(l64 > 0, np.left_shift(np.int64(1), (MAX_CODE_LEN - l64).clip(0)), 0)))
    if kraft > (1 << MAX_CODE_LEN):
        raise FormatError(f"{what}: code lengths do not form a prefix code (Kraft sum "
                          f"{kraft / (1 << MAX_CODE_LEN):.6f} > 1)")
    return lengths.astype(np.uint8)


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
@nb.njit(nogil=True, cache=True)
def _build_decoder(lengths, lut_bits, lut_sym, lut_info, sorted_syms, first_code, first_index, len_count):
    """Fill the multi-symbol lookup table and the canonical slow-path tables.

    lut_info[i] = nbits | (nsym << 8) | (len1 << 12): total bits of the nsym (0..4) whole codes
    resolved by the lut_bits-bit prefix i, and the length of the first one (0 if the first code
    is longer than lut_bits or the prefix matches no code).
    """
    n = lengths.shape[0]
    codes = _canonical_codes(lengths)
    # canonical tables
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
    k = 0
    for ln in range(1, MAX_CODE_LEN + 1):
        for s in range(n):
            if lengths[s] == ln:
                sorted_syms[k] = s
                k += 1
    # single-symbol table of the first code for each prefix
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
        len1 = one_len[i]
        while nsym < LUT_SYMS:
            rem = lut_bits - used
            if rem <= 0:
                break
            # the next code starts at bit `used` of the prefix; look it up with zero fill
            j = (i << used) & mask
            ln = one_len[j]
            if ln == 0 or ln > rem:
                break
            lut_sym[i, nsym] = one_sym[j]
            used += ln
            nsym += 1
        for t in range(nsym, LUT_SYMS):
            lut_sym[i, t] = 0
        lut_info[i] = np.uint16(used | (nsym << 8) | (len1 << 12)) if len1 < 16 else np.uint16(0)


class Decoder:
    """Decoding tables for one code-length table (cached per table, thread-safe to share)."""

    def __init__(self, lengths: np.ndarray, max_len: int, lut_bits: int = LUT_BITS):
        self.lengths = validate_lengths(lengths, max_len)
        self.max_len = max_len
        self.lut_bits = lut_bits
        n = self.lengths.size
        sym_dtype = np.uint8 if n <= 256 else np.uint16
        self.sym_dtype = sym_dtype
        self.lut_sym = np.zeros((1 << lut_bits, LUT_SYMS), sym_dtype)
        self.lut_info = np.zeros(1 << lut_bits, np.uint16)
        self.sorted_syms = np.zeros(n, sym_dtype)
        self.first_code = np.zeros(MAX_CODE_LEN + 1, np.int64)
        self.first_index = np.zeros(MAX_CODE_LEN + 1, np.int64)
        self.len_count = np.zeros(MAX_CODE_LEN + 1, np.int64)
        _build_decoder(self.lengths, lut_bits, self.lut_sym, self.lut_info, self.sorted_syms,
                       self.first_code, self.first_index, self.len_count)

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
        st = _decode(stream, nbits, n, self.lut_bits, self.lut_sym, self.lut_info, self.sorted_syms,
                     self.first_code, self.first_index, self.len_count, self.max_len, out)
        if st != OK:
            raise FormatError(f"{what} is corrupt: {_STATUS_TEXT.get(st, st)}")
        return out


_cache_lock = threading.Lock()
_decoder_cache: dict[tuple[bytes, int], Decoder] = {}


def get_decoder(lengths: np.ndarray, max_len: int) -> Decoder:
    key = (np.ascontiguousarray(lengths, dtype=np.uint8).tobytes(), max_len)
    d = _decoder_cache.get(key)
    if d is None:
        d = Decoder(lengths, max_len)
        with _cache_lock:
            if len(_decoder_cache) > 256:
                _decoder_cache.clear()
            _decoder_cache[key] = d
    return d


# ---------------------------------------------------------------------------------------------
# decoding kernel
# ---------------------------------------------------------------------------------------------
@nb.njit(nogil=True, cache=True)
def _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, lut_bits, max_len):
    """Canonical decode of one code longer than the LUT; returns (symbol, length) or (0, 0)."""
    for ln in range(lut_bits + 1, max_len + 1):
        c = np.int64(buf >> np.uint64(64 - ln))
        off = c - first_code[ln]
        if off >= 0 and off < len_count[ln]:
            return np.int64(sorted_syms[first_index[ln] + off]), np.int64(ln)
    return np.int64(0), np.int64(0)


@nb.njit(nogil=True, cache=True)
def _decode(src, nbits, n, lut_bits, lut_sym, lut_info, sorted_syms, first_code, first_index,
            len_count, max_len, out):
    nbytes = src.shape[0]
    buf = np.uint64(0)     # left-aligned bit buffer
    cnt = np.int64(0)      # valid bits in buf
    p = np.int64(0)        # next byte to load
    o = np.int64(0)
    shift = np.uint64(64 - lut_bits)
    # fast loop: whole 4-byte refills are in bounds, 4 output slots are free
    while o + LUT_SYMS <= n and p + 4 <= nbytes:
        if cnt < 32:
            w = (np.uint64(src[p]) << np.uint64(24)) | (np.uint64(src[p + 1]) << np.uint64(16)) | \
                (np.uint64(src[p + 2]) << np.uint64(8)) | np.uint64(src[p + 3])
            buf |= w << np.uint64(32 - cnt)
            cnt += 32
            p += 4
        idx = np.int64(buf >> shift)
        info = np.int64(lut_info[idx])
        nsym = (info >> 8) & 15
        if nsym > 0:
            nb_ = info & 255
            out[o] = lut_sym[idx, 0]
            out[o + 1] = lut_sym[idx, 1]
            out[o + 2] = lut_sym[idx, 2]
            out[o + 3] = lut_sym[idx, 3]
            o += nsym
            buf <<= np.uint64(nb_)
            cnt -= nb_
        else:
            s, ln = _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, lut_bits, max_len)
            if ln == 0:
                return ERR_BAD_CODE
            out[o] = s
            o += 1
            buf <<= np.uint64(ln)
            cnt -= ln
    while o < n:
        # refill to >= 32 valid bits (4 bytes at a time while they exist, then byte by byte)
        if cnt < 32:
            if p + 4 <= nbytes:
                w = (np.uint64(src[p]) << np.uint64(24)) | (np.uint64(src[p + 1]) << np.uint64(16)) | \
                    (np.uint64(src[p + 2]) << np.uint64(8)) | np.uint64(src[p + 3])
                buf |= w << np.uint64(32 - cnt)
                cnt += 32
                p += 4
            else:
                while cnt <= 56 and p < nbytes:
                    buf |= np.uint64(src[p]) << np.uint64(56 - cnt)
                    cnt += 8
                    p += 1
                if p >= nbytes:
                    # zero bits past the end: allowed only up to 32 virtual bits for lookahead;
                    # consuming them is caught by the final bit count check
                    if cnt <= 0:
                        return ERR_EXHAUSTED
                    if p * 8 - cnt > nbits:
                        return ERR_EXHAUSTED
        idx = np.int64(buf >> shift)
        info = np.int64(lut_info[idx])
        nsym = (info >> 8) & 15
        if nsym > 0 and o + LUT_SYMS <= n:
            nb_ = info & 255
            out[o] = lut_sym[idx, 0]
            out[o + 1] = lut_sym[idx, 1]
            out[o + 2] = lut_sym[idx, 2]
            out[o + 3] = lut_sym[idx, 3]
            o += nsym
            buf <<= np.uint64(nb_)
            cnt -= nb_
        else:
            len1 = info >> 12
            if len1 > 0:
                out[o] = lut_sym[idx, 0]
                o += 1
                buf <<= np.uint64(len1)
                cnt -= len1
            else:
                s, ln = _slow_symbol(buf, sorted_syms, first_code, first_index, len_count, lut_bits, max_len)
                if ln == 0:
                    return ERR_BAD_CODE
                out[o] = s
                o += 1
                buf <<= np.uint64(ln)
                cnt -= ln
        if cnt < 0:
            return ERR_EXHAUSTED
    used = p * 8 - cnt
    if used != nbits:
        return ERR_LENGTH
    return OK


def decode(stream, nbits: int, n: int, lengths, max_len: int, out=None, what: str = "Huffman stream"):
    """Decode n symbols from an MSB-first Huffman bitstream of exactly nbits bits."""
    stream = np.frombuffer(stream, np.uint8) if not isinstance(stream, np.ndarray) else stream
    return get_decoder(lengths, max_len).decode(stream, nbits, n, out, what)


# ---------------------------------------------------------------------------------------------
# self-describing byte block: table + bitstream (used by bytegroup planes)
# ---------------------------------------------------------------------------------------------
BLOCK_MAX_LEN = 15


def pack_lengths(lengths: np.ndarray) -> bytes:
    """256 code lengths (each <= 15) as a 32-byte bitmap of used symbols + 4-bit lengths of those."""
    lengths = np.asarray(lengths, np.uint8)
    used = lengths > 0
    bitmap = np.packbits(used, bitorder="big")
    ls = lengths[used]
    if ls.size % 2:
        ls = np.append(ls, 0)
    nib = (ls[0::2] << 4) | ls[1::2]
    return bitmap.tobytes() + nib.astype(np.uint8).tobytes()


def unpack_lengths(buf: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Inverse of pack_lengths: (lengths, bytes consumed)."""
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


def encode_block(data: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    """Self-describing Huffman block of a uint8 array: u32 bit count | packed table | bitstream."""
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    if counts is None:
        counts = np.bincount(data, minlength=256)
    lengths = code_lengths(counts, BLOCK_MAX_LEN)
    table = pack_lengths(lengths)
    bits, nbits = encode(data, lengths)
    return np.uint32(nbits).tobytes() + table + bits.tobytes()


def block_size(counts: np.ndarray) -> int:
    """Exact byte size encode_block would produce for data with these counts."""
    counts = np.asarray(counts, np.int64)
    lengths = code_lengths(counts, BLOCK_MAX_LEN)
    nbits = int((counts * lengths).sum())
    k = int(np.count_nonzero(lengths))
    return 4 + 32 + (k + 1) // 2 + (nbits + 7) // 8


def decode_block(buf: np.ndarray, out: np.ndarray, what: str = "Huffman block") -> np.ndarray:
    """Decode an encode_block() block that must fill `out` (uint8) exactly."""
    if buf.size < 4:
        raise FormatError(f"{what}: truncated header ({buf.size} of 4 bytes)")
    nbits = int(buf[:4].view("<u4")[0])
    lengths, used = unpack_lengths(buf[4:], what)
    body = buf[4 + used:]
    if (nbits + 7) // 8 != body.size:
        raise FormatError(f"{what}: declares {nbits} bits, holds {body.size} bytes")
    if out.size == 0:
        if nbits:
            raise FormatError(f"{what}: {nbits} bits for 0 symbols")
        return out
    if not lengths.any():
        raise FormatError(f"{what}: empty code table for {out.size} symbols")
    return get_decoder(lengths, BLOCK_MAX_LEN).decode(body, nbits, out.size, out, what)
