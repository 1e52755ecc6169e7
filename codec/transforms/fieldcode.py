"""Coding one byte stream (a field of a quantized format) with the best of Huffman, zstd and raw.

Shared by the quantized-format codecs (`fp8`, `ggml`, `int4pack`, `quant`). A coded stream is:

    u8 method (0 raw, 1 huffman, 2 zstd) | u32 LE body length | body

- raw: the bytes.
- huffman: `codec.entropy.huffman.encode_block` (u32 bit count, used-value bitmap, 4-bit code
  lengths, MSB-first canonical bitstream).
- zstd: one Zstandard frame without content size or checksum.
- ans (only where the caller allows it, e.g. `fp8`): rANS with one static order-0 model per stream,
  via `constriction` 0.5 (`stream.stack.AnsCoder`, `stream.model.Categorical(f / 2^14, perfect=False)`):
  32-byte bitmap of the used byte values | u16 LE frequency of each used value, in value order, each
  >= 1, summing to 2^14 | u32 LE words of the AnsCoder's compressed data. Closer to the entropy than
  Huffman on peaked byte distributions (FP8 weights: about 0.4 points of ratio).

`encode_stream` picks the smallest. zstd at `zstd_level` is tried only when a cheap zstd -1 probe
comes within `probe` of the Huffman size (zstd wins on structured data such as sinusoidal position
tables and repeated block scales; on noisy weight bytes order-0 Huffman is as good and much faster).
"""
from __future__ import annotations

import struct

import numpy as np

from ..entropy import huffman
from ..entropy.zstd import compress_bytes, decompress_into
from ..errors import FormatError
from ..stats import byte_entropy_bits

RAW, HUFFMAN, ZSTD, ANS = 0, 1, 2, 3
METHOD_NAMES = {RAW: "raw", HUFFMAN: "huffman", ZSTD: "zstd", ANS: "ans"}
ANS_PREC = 14


def _ans_freqs(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to 2^ANS_PREC, >= 1 for every used value (deterministic)."""
    counts = np.asarray(counts, np.int64)
    used = counts > 0
    total = 1 << ANS_PREC
    f = np.where(used, np.maximum(1, (counts * total) // max(int(counts.sum()), 1)), 0)
    d = total - int(f.sum())
    order = np.argsort(-counts, kind="stable")   # adjust the most frequent values first
    i = 0
    while d != 0:
        s = order[i % int(used.sum())]
        step = 1 if d > 0 else -1
        if f[s] + step >= 1:
            f[s] += step
            d -= step
        i += 1
    return f


def _ans_model(f: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(f.astype(np.float64) / (1 << ANS_PREC), perfect=False)


def ans_encode(data: np.ndarray, counts: np.ndarray) -> bytes:
    import constriction

    f = _ans_freqs(counts)
    used = f > 0
    if int(used.sum()) < 2:
        return b""          # a constant stream: Huffman or zstd handle it
    enc = constriction.stream.stack.AnsCoder()
    enc.encode_reverse(data.astype(np.int32), _ans_model(f))
    words = enc.get_compressed().astype("<u4")
    return np.packbits(used.astype(np.uint8)).tobytes() + f[used].astype("<u2").tobytes() + words.tobytes()


def ans_decode(body: np.ndarray, out: np.ndarray, what: str) -> None:
    import constriction

    if body.size < 32:
        raise FormatError(f"{what}: ans table truncated ({body.size} bytes)")
    used = np.unpackbits(body[:32]).astype(bool)
    k = int(used.sum())
    if k < 2 or body.size < 32 + 2 * k or (body.size - 32 - 2 * k) % 4:
        raise FormatError(f"{what}: ans stream of {body.size} bytes does not fit its {k}-value table")
    f = np.zeros(256, np.int64)
    f[used] = body[32:32 + 2 * k].view("<u2")
    if int(f[used].min()) < 1 or int(f.sum()) != 1 << ANS_PREC:
        raise FormatError(f"{what}: ans frequencies must be >= 1 and sum to {1 << ANS_PREC}")
    words = body[32 + 2 * k:].view("<u4").astype(np.uint32)
    try:
        dec = constriction.stream.stack.AnsCoder(words)
        sym = dec.decode(_ans_model(f), out.size)
    except Exception as exc:  # noqa: BLE001  (constriction raises its own types on bad data)
        raise FormatError(f"{what}: undecodable ans stream ({exc})") from None
    if not dec.is_empty():
        raise FormatError(f"{what}: ans stream has data left after {out.size} symbols")
    out[:] = sym
HEAD = struct.Struct("<BI")


def encode_stream(data: np.ndarray, zstd_level: int = 19, probe: float = 1.02, ans: bool = False) -> bytes:
    """The smallest of raw / Huffman / zstd for a uint8 stream, with its 5-byte header."""
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    n = data.size
    best_m, best_len, best = RAW, n, None
    if n:
        counts = np.bincount(data, minlength=256)
        hs = huffman.block_size(counts)
        if hs < best_len:
            best_m, best_len = HUFFMAN, hs
        if zstd_level:
            z1 = compress_bytes(data, 1)
            if len(z1) < best_len * probe:
                z = compress_bytes(data, zstd_level) if zstd_level != 1 else z1
                z = min((z, z1), key=len)
                if len(z) < best_len:
                    best_m, best_len, best = ZSTD, len(z), z
        if ans and n >= 4096:
            a = ans_encode(data, counts)
            if a and len(a) < best_len:
                best_m, best_len, best = ANS, len(a), a
        if best_m == HUFFMAN:
            best = huffman.encode_block(data, counts)
    if best_m == RAW:
        best = data.tobytes()
    return HEAD.pack(best_m, len(best)) + best


def stream_extent(buf: np.ndarray, off: int, what: str) -> tuple[int, int, int]:
    """(method, body offset, body length) of the stream at `off`; checks it lies inside `buf`."""
    if off + HEAD.size > buf.size:
        raise FormatError(f"{what}: stream header at byte {off} runs past the payload end {buf.size}")
    m, ln = HEAD.unpack_from(buf, off)
    if m not in METHOD_NAMES:
        raise FormatError(f"{what}: unknown stream method {m} at byte {off}")
    if off + HEAD.size + ln > buf.size:
        raise FormatError(f"{what}: stream of {ln} bytes at byte {off + HEAD.size} runs past the "
                          f"payload end {buf.size}")
    return m, off + HEAD.size, ln


def decode_stream(buf: np.ndarray, off: int, out: np.ndarray, what: str) -> int:
    """Decode the stream at `off` into `out` (uint8, exact size); return the offset after it."""
    m, body, ln = stream_extent(buf, off, what)
    src = buf[body:body + ln]
    if m == RAW:
        if ln != out.size:
            raise FormatError(f"{what}: raw stream holds {ln} bytes, expected {out.size}")
        out[:] = src
    elif m == HUFFMAN:
        huffman.decode_block(src, out, what)
    elif m == ANS:
        ans_decode(src, out, what)
    else:
        decompress_into(src, out, what + " (zstd)")
    return body + ln


def stream_bits(buf: np.ndarray, off: int, what: str) -> tuple[str, int, int]:
    """(method name, bits spent including the header, offset after) for `codec inspect`."""
    m, body, ln = stream_extent(buf, off, what)
    return METHOD_NAMES[m], 8 * (HEAD.size + ln), body + ln


def entropy(data: np.ndarray) -> float:
    return byte_entropy_bits(np.ascontiguousarray(data, np.uint8))
