"""Slow, plain-numpy decoders that follow the written layouts (huffman.py, exponent.py,
bytegroup.py docstrings; formats/EXPONENT.md) line by line. They are the test oracle for the
numba decoders and share no decoding code with them.
"""
from __future__ import annotations

import struct

import numpy as np

from .errors import FormatError


def canonical_code_table(lengths) -> dict[tuple[int, int], int]:
    """{(length, code): symbol} of the canonical code (DEFLATE convention)."""
    lengths = [int(x) for x in lengths]
    table = {}
    code = 0
    for ln in range(1, 33):
        for s, l2 in enumerate(lengths):
            if l2 == ln:
                table[(ln, code)] = s
                code += 1
        code <<= 1
    return table


def check_segments(offsets, nbits: int, n: int, lengths, syms, nseg: int = 4) -> None:
    """The segment table (bit offsets of the codes of symbols j*n//nseg, j = 1..nseg-1) must
    match the decoded stream: the code of symbol i starts at the sum of the earlier code lengths."""
    starts = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64)[np.asarray(syms, np.int64)])])
    for j in range(1, nseg):
        if int(offsets[j - 1]) != int(starts[(j * n) // nseg]):
            raise FormatError(f"segment {j} offset {int(offsets[j - 1])} is not the start of symbol "
                              f"{(j * n) // nseg} (bit {int(starts[(j * n) // nseg])})")


def huffman_decode(stream: bytes | np.ndarray, nbits: int, n: int, lengths) -> np.ndarray:
    """Decode n symbols bit by bit from an MSB-first canonical Huffman stream of nbits bits."""
    bits = np.unpackbits(np.frombuffer(bytes(stream), np.uint8), bitorder="big")
    if nbits > bits.size:
        raise FormatError("stream shorter than its bit count")
    table = canonical_code_table(lengths)
    maxlen = max(int(x) for x in lengths) if len(lengths) else 0
    out = np.zeros(n, np.int64)
    pos = 0
    for i in range(n):
        code = 0
        for ln in range(1, maxlen + 1):
            if pos + ln > nbits:
                raise FormatError("stream ends inside a code")
            code = (code << 1) | int(bits[pos + ln - 1])
            s = table.get((ln, code))
            if s is not None:
                out[i] = s
                pos += ln
                break
        else:
            raise FormatError("bit pattern matches no code")
    if pos != nbits:
        raise FormatError("bit count mismatch")
    return out


def read_bits_msb(stream: bytes, width: int, n: int) -> np.ndarray:
    """n fields of `width` bits, MSB-first."""
    bits = np.unpackbits(np.frombuffer(bytes(stream), np.uint8), bitorder="big")
    if bits.size < n * width:
        raise FormatError("fixed-width stream too short")
    f = bits[: n * width].reshape(n, width).astype(np.int64) if n else np.zeros((0, width), np.int64)
    return (f * (1 << np.arange(width - 1, -1, -1))).sum(axis=1) if n else np.zeros(0, np.int64)


def exponent_decode(payload: bytes, config: dict, n_bytes: int) -> np.ndarray:
    """Reference decoder of an `exponent` chunk -> uint8 array of n_bytes."""
    k = config["mantissa_bits"]
    lengths = np.zeros(256 << k, np.int64)
    for s, ln in config["code_lengths"]:
        lengths[s] = ln
    n, nbits = struct.unpack_from("<II", payload, 0)
    if 2 * n != n_bytes:
        raise FormatError("value count mismatch")
    E = 8 * ((nbits + 63) // 64) + 8
    w = 8 - k
    R = (n * w + 7) // 8
    nseg = config.get("segments", 4)    # absent: the 1.0 layout
    if len(payload) != 8 + E + R + 4 * (nseg - 1):
        raise FormatError("payload size mismatch")
    syms = huffman_decode(payload[8:8 + E], nbits, n, lengths)
    check_segments(struct.unpack_from(f"<{nseg - 1}I", payload, 8 + E + R), nbits, n, lengths, syms, nseg)
    rem = read_bits_msb(payload[8 + E:], w, n)
    sh = 7 - k
    v = ((rem >> sh) << 15) | (syms << sh) | (rem & ((1 << sh) - 1))
    return v.astype("<u2").view(np.uint8)


def huffman_block_decode(body: bytes, n: int, nseg: int = 4) -> np.ndarray:
    nbits = struct.unpack_from("<I", body, 0)[0]
    used = np.unpackbits(np.frombuffer(body[4:36], np.uint8), bitorder="big").astype(bool)
    k = int(used.sum())
    nib = np.frombuffer(body[36:36 + (k + 1) // 2], np.uint8)
    ls = np.stack([nib >> 4, nib & 15], axis=1).reshape(-1)[:k]
    lengths = np.zeros(256, np.int64)
    lengths[used] = ls
    t = 36 + (k + 1) // 2
    stream = body[t + 4 * (nseg - 1):]
    if len(stream) != (nbits + 7) // 8:
        raise FormatError("block size mismatch")
    syms = huffman_decode(stream, nbits, n, lengths)
    check_segments(struct.unpack_from(f"<{nseg - 1}I", body, t), nbits, n, lengths, syms, nseg)
    return syms.astype(np.uint8)


def bytegroup_decode(payload: bytes, config: dict, n_bytes: int) -> np.ndarray:
    """Reference decoder of a `bytegroup` chunk."""
    import zstandard

    s, rot = config["itemsize"], config["rotate"]
    nseg = config.get("segments", 4)    # absent: the 1.0 layout
    n, t = divmod(n_bytes, s)
    off = 5 * s
    planes = []
    for p in range(s):
        m = payload[5 * p]
        ln = struct.unpack_from("<I", payload, 5 * p + 1)[0]
        body = payload[off:off + ln]
        off += ln
        if m == 0:
            planes.append(np.frombuffer(body, np.uint8))
        elif m == 1:
            planes.append(huffman_block_decode(body, n, nseg))
        elif m == 2:
            planes.append(np.frombuffer(zstandard.ZstdDecompressor().decompress(body, max_output_size=n), np.uint8))
        elif m == 3:
            nb8 = (n + 7) // 8
            if len(body) < nb8:
                raise FormatError("huffman7 plane shorter than its top-bit map")
            top = np.unpackbits(np.frombuffer(body[:nb8], np.uint8), bitorder="big")[:n]
            planes.append(huffman_block_decode(body[nb8:], n, nseg) | (top << 7).astype(np.uint8))
        elif m == 4:
            nb8 = (n + 7) // 8
            if len(body) < 2:
                raise FormatError("bits plane shorter than its mask and base")
            mask, base = body[0], body[1]
            qs = [q for q in range(8) if mask >> q & 1]
            if len(body) != 2 + len(qs) * nb8 or mask & base:
                raise FormatError("bits plane: wrong length or masked bits in its base")
            plane = np.full(n, base, np.uint8)
            for j, q in enumerate(qs):
                bits = np.unpackbits(np.frombuffer(body[2 + j * nb8:2 + (j + 1) * nb8], np.uint8), bitorder="big")
                if bits[n:].any():
                    raise FormatError("bits plane: bits set past the plane's end")
                plane |= (bits[:n] << q).astype(np.uint8)
            planes.append(plane)
        else:
            raise FormatError("bad method")
    words = [0] * n
    vals = np.zeros(n, dtype=object)
    for p in range(s):
        vals = vals + planes[p].astype(object) * (1 << (8 * p))
    bits = 8 * s
    mask = (1 << bits) - 1
    out = bytearray()
    for v in vals:
        v = int(v)
        if rot:
            v = ((v >> rot) | (v << (bits - rot))) & mask
        out += v.to_bytes(s, "little")
    del words
    out += payload[len(payload) - t:] if t else b""
    return np.frombuffer(bytes(out), np.uint8)


def gpu_sync_reference(payloads: list[bytes], config: dict, bpt: int = 8, tpb: int = 256):
    """(gaps, out_starts) per chunk from the definition in formats/EXPONENT.md."""
    k = config["mantissa_bits"]
    lengths = np.zeros(256 << k, np.int64)
    for s, ln in config["code_lengths"]:
        lengths[s] = ln
    result = []
    for pl in payloads:
        n, nbits = struct.unpack_from("<II", pl, 0)
        E = 8 * ((nbits + 63) // 64) + 8
        syms = huffman_decode(pl[8:8 + E], nbits, n, lengths)
        starts = np.concatenate([[0], np.cumsum(lengths[syms])[:-1]]) if n else np.zeros(0, np.int64)
        wbits = 8 * bpt
        nwin = max(1, -(-nbits // wbits))
        nblk = -(-nwin // tpb)
        gaps = np.full(nblk * tpb, 255, np.int64)
        for w in range(nblk * tpb):
            inwin = starts[(starts >= w * wbits) & (starts < (w + 1) * wbits)]
            if inwin.size:
                gaps[w] = inwin[0] - w * wbits
        outs = np.array([int(np.sum(starts < b * tpb * wbits)) for b in range(nblk)], np.int64)
        result.append((gaps, outs))
    return result
