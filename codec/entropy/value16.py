"""`value16`: order-0 rANS on the high bits of each 16-bit value (BF16), the low bits raw.

Normative description (also in formats/SPEC.md, section 4.2).

With r = `low_bits` (0..7) and v a 16-bit value (little-endian in the chunk):
    symbol = v >> r                     (alphabet 65536 >> r; the sign, exponent, top 7 - r mantissa bits)
    low    = v & ((1 << r) - 1)         (stored raw)
r = 0 codes the whole 16-bit value, whose order-0 entropy is the bound this codec aims at; `fit`
picks per tensor the r and the precision P that give the smallest frame, table included.

Table (JSON config `table`, one per tensor): the A used symbols s_0 < ... < s_{A-1} with integer
frequencies f_i >= 1 summing to exactly 2^P (P = `precision`, 8..24). Serialized as
    varint A, then per symbol varint (s_i - s_{i-1} - 1) (s_{-1} = -1), then per symbol varint f_i - 1
(LEB128 varints), then prefixed by one byte: 0 = the bytes follow as they are, 1 = they follow as
one Zstandard frame (no content size, no checksum); the result is base85 encoded (Python
`base64.b85encode`, RFC 1924 alphabet) into the JSON string. The frequencies come from the tensor's
counts c_i by a deterministic rule (`quantize_freqs`) but a decoder only needs the table.

Coding: the symbol's index i in the table is coded with `constriction` 0.5's
`stream.stack.AnsCoder` (`encode_reverse` over the chunk, so decoding reads values in order) and
`stream.model.Categorical(w, perfect=False)` with w_i = f_i * 2^(24 - P) - 1 as float64.
constriction's categorical models have 24-bit precision and its leaky quantizer gives symbol i
the frequency w_i + 1 exactly for integer weights (cdf_i = floor(sum_{j<i} w_j * (2^24 - A) /
sum(w)) + i with a scale of exactly 1), i.e. f_i * 2^(24-P): the coded model is the table.
A table with one symbol (A = 1) codes no words.

Chunk payload (a chunk is a run of whole 16-bit values; n = decoded bytes / 2), little-endian:
    offset 0   u32 n          number of values
    offset 4   u32 W          number of ANS words (0 when A = 1 or n = 0)
    offset 8   W x u32        the AnsCoder's compressed words (`get_compressed()`)
    then       ceil(n * r / 8) bytes: the n r-bit low fields MSB-first, value i at bits
               [i*r, i*r + r), the last byte padded with zero bits
The payload is exactly 8 + 4 W + ceil(n r / 8) bytes; anything else, a decoder error or words
left over after n symbols is a FormatError (the container's chunk checksum catches the rest).
"""
from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from ..abc import Codec
from ..errors import FormatError
from ..registry import register_codec
from ..stats import StreamStat, entropy_bits_of_counts

HEADER = 8
CONSTRICTION_PREC = 24
MIN_PREC, MAX_PREC = 8, 24
DEFAULT_CHUNK = 1 << 20
PREC_CANDIDATES = (10, 12, 14, 15, 16, 17, 18, 19, 20, 22, 24)


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------
def quantize_freqs(counts: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies (>= 1 for each count > 0, 0 elsewhere) summing to 2^precision.

    Symbols whose share would floor to 0 get 1; the rest share what is left in proportion to
    their counts (floored, repeated until no further symbol drops to 0); the remainder d goes one
    unit each to the d most frequent symbols (ties: lower symbol first).
    """
    c = np.asarray(counts, np.int64)
    used = c > 0
    A = int(used.sum())
    T = 1 << precision
    if A == 0 or A > T:
        raise ValueError(f"cannot give {A} symbols frequencies summing to 2^{precision}")
    ones = np.zeros(c.shape, bool)
    while True:
        rest = used & ~ones
        n_rest = int(c[rest].sum())
        budget = T - int(ones.sum())
        f = np.zeros(c.shape, np.int64)
        if n_rest:
            f[rest] = (c[rest] * budget) // n_rest   # c * budget < 2^63 for tensors < 2^39 values
        new = rest & (f == 0)
        if not new.any():
            break
        ones |= new
    f[ones] = 1
    d = T - int(f.sum())
    assert 0 <= d <= A
    if d:
        order = np.argsort(-c, kind="stable")[:d]
        f[order] += 1
    return f


def _varints(x: np.ndarray) -> bytes:
    x = np.asarray(x, np.uint64)
    out = bytearray()
    for v in x.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(buf: bytes, pos: int, count: int, what: str) -> tuple[list[int], int]:
    vals = []
    n = len(buf)
    for _ in range(count):
        v = 0
        shift = 0
        while True:
            if pos >= n or shift > 63:
                raise FormatError(f"{what}: truncated or overlong varint")
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        vals.append(v)
    return vals, pos


def encode_table(syms: np.ndarray, freqs: np.ndarray) -> str:
    from .zstd import compress_bytes

    syms = np.asarray(syms, np.int64)
    gaps = np.diff(np.concatenate([[-1], syms])) - 1
    body = _varints([len(syms)]) + _varints(gaps) + _varints(np.asarray(freqs, np.int64) - 1)
    z = compress_bytes(body, 19)
    packed = b"\x01" + z if len(z) < len(body) else b"\x00" + body
    return base64.b85encode(packed).decode("ascii")


def decode_table(text: Any, precision: int, nsym: int) -> tuple[np.ndarray, np.ndarray]:
    what = "value16 table"
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a string")
    try:
        packed = base64.b85decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise FormatError(f"{what}: bad base85 ({exc})") from None
    if not packed or packed[0] not in (0, 1):
        raise FormatError(f"{what}: unknown packing")
    body = bytes(packed[1:])
    if packed[0] == 1:
        import zstandard

        from .zstd import _decompressor
        try:
            body = _decompressor().decompress(body, max_output_size=2 * 10 * 65536 + 16)
        except zstandard.ZstdError as exc:
            raise FormatError(f"{what} is corrupt: {exc}") from None
    (A,), pos = _read_varints(body, 0, 1, what)
    if not 1 <= A <= min(nsym, 1 << precision):
        raise FormatError(f"{what}: {A} symbols for an alphabet of {nsym}")
    gaps, pos = _read_varints(body, pos, A, what)
    fm1, pos = _read_varints(body, pos, A, what)
    if pos != len(body):
        raise FormatError(f"{what}: {len(body) - pos} trailing bytes")
    if max(gaps) >= nsym or max(fm1) >= (1 << precision):
        raise FormatError(f"{what}: symbol or frequency out of range")
    syms = np.cumsum(np.asarray(gaps, np.int64) + 1) - 1
    freqs = np.asarray(fm1, np.int64) + 1
    if int(syms[-1]) >= nsym:
        raise FormatError(f"{what}: symbol {int(syms[-1])} outside the alphabet of {nsym}")
    if int(freqs.sum()) != 1 << precision:
        raise FormatError(f"{what}: frequencies sum to {int(freqs.sum())}, not 2^{precision}")
    return syms, freqs


# ---------------------------------------------------------------------------------------------
# low bits
# ---------------------------------------------------------------------------------------------
def _pack_low(low: np.ndarray, r: int) -> bytes:
    if r == 0 or low.size == 0:
        return b""
    bits = np.unpackbits(low.astype(np.uint8)[:, None], axis=1)[:, 8 - r:]
    return np.packbits(bits.reshape(-1)).tobytes()


def _unpack_low(buf: np.ndarray, n: int, r: int) -> np.ndarray:
    if r == 0:
        return np.zeros(n, np.uint16)
    bits = np.unpackbits(buf)[: n * r].reshape(n, r)
    w = (1 << np.arange(r - 1, -1, -1)).astype(np.uint16)
    return (bits.astype(np.uint16) * w).sum(axis=1, dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# the codec
# ---------------------------------------------------------------------------------------------
@register_codec
class Value16(Codec):
    codec_id = "value16"
    max_expansion = 1.2
    description = "BF16: static order-0 rANS on the 16-bit value (top bits), low bits raw (level max)"

    def __init__(self, low_bits: int | None = None, precision: int | None = None, table: str | None = None,
                 compare_exponent: bool = False):
        if low_bits is not None and (type(low_bits) is not int or not 0 <= low_bits <= 7):
            raise FormatError(f"value16: low_bits must be 0..7, got {low_bits!r:.40}")
        if precision is not None and (type(precision) is not int or not MIN_PREC <= precision <= MAX_PREC):
            raise FormatError(f"value16: precision must be {MIN_PREC}..{MAX_PREC}, got {precision!r:.40}")
        self.low_bits = low_bits
        self.precision = precision
        self.table = table
        # fit-time only (not part of the stream config): also cost `exponent` k = 0..3 and return it
        # when it gives the smaller frame
        self.compare_exponent = compare_exponent
        self._syms = self._freqs = self._lut = self._model = None
        if table is not None:
            if low_bits is None or precision is None:
                raise FormatError("value16: table given without low_bits and precision")
            self._set_table(*decode_table(table, precision, 65536 >> low_bits))

    def _set_table(self, syms, freqs):
        self._syms = np.asarray(syms, np.int64)
        self._freqs = np.asarray(freqs, np.int64)
        lut = np.full(65536 >> self.low_bits, -1, np.int32)
        lut[self._syms] = np.arange(self._syms.size, dtype=np.int32)
        self._lut = lut
        self._model = None

    def _get_model(self):
        if self._model is None:
            import constriction

            w = (self._freqs << (CONSTRICTION_PREC - self.precision)) - 1
            self._model = constriction.stream.model.Categorical(w.astype(np.float64), perfect=False)
        return self._model

    # -- frame level ---------------------------------------------------------------------
    def fit(self, source, dtype: str) -> Codec:
        if dtype != "BF16":
            raise ValueError(f"the value16 codec codes BF16 tensors, not {dtype}")
        hist = np.zeros(65536, np.int64)
        n = 0
        nchunks = 0
        for piece in source.iter_chunks(DEFAULT_CHUNK):
            if piece.size % 2:
                raise ValueError("BF16 data must have an even number of bytes")
            v = np.ascontiguousarray(piece).view("<u2")
            hist += np.bincount(v, minlength=65536)
            n += v.size
            nchunks += 1
        if n == 0:
            hist[0] = 1
        rs = [self.low_bits] if self.low_bits is not None else range(8)
        best = None
        for r in rs:
            counts = hist.reshape(-1, 1 << r).sum(axis=1)
            used = np.flatnonzero(counts)
            c = counts[used]
            A = used.size
            lo = max(MIN_PREC, math.ceil(math.log2(A)) + 1 if A > 1 else MIN_PREC)
            ps = [self.precision] if self.precision is not None else \
                sorted({p for p in PREC_CANDIDATES if p >= lo} | {max(lo, min(MAX_PREC, lo))})
            for p in ps:
                if (1 << p) < A:
                    continue
                f = quantize_freqs(counts, p)[used]
                data_bits = float((c * (p - np.log2(f))).sum()) + n * r if A > 1 else n * r
                table = encode_table(used, f)
                cost = data_bits + 8 * len(table)
                if best is None or cost < best[0]:
                    best = (cost, r, p, table, used, f)
        cost, r, p, table, used, f = best
        fitted = Value16(r, p)
        fitted.table = table
        fitted._set_table(used, f)
        if self.compare_exponent and n:
            e_cost, e_codec = _exponent_cost(hist, n, source, dtype)
            v_cost = cost + 8 * (len(json.dumps(fitted.get_config())) - len(table)) + nchunks * 8 * 12
            if e_cost < v_cost:
                return e_codec
        return fitted

    def chunk_alignment(self) -> int:
        return 2

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "low_bits": self.low_bits, "precision": self.precision,
                "table": self.table}

    @classmethod
    def from_config(cls, config):
        params = {k: v for k, v in config.items() if k != "id"}
        unknown = set(params) - {"low_bits", "precision", "table"}
        if unknown:
            raise FormatError(f"value16 codec: unknown config keys {sorted(unknown)}")
        return cls(**params)

    def describe(self) -> str:
        a = 0 if self._syms is None else self._syms.size
        return f"value16(low_bits={self.low_bits},precision={self.precision},symbols={a})"

    def _need_table(self):
        if self._syms is None:
            raise ValueError("the value16 codec needs a table: call fit() first")

    # -- chunk level ---------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> bytes:
        import constriction

        self._need_table()
        chunk = np.ascontiguousarray(chunk, np.uint8).reshape(-1)
        if chunk.size % 2:
            raise ValueError(f"BF16 chunk of odd size {chunk.size}")
        v = chunk.view("<u2")
        n = v.size
        r = self.low_bits
        idx = self._lut[v >> r]
        if n and int(idx.min()) < 0:
            i = int(np.flatnonzero(idx < 0)[0])
            raise ValueError(f"value {i} of the chunk ({int(v[i]):#06x}) has a symbol without a frequency "
                             "in this tensor's table (fit the codec on the data it encodes)")
        words = b""
        if n and self._syms.size > 1:
            enc = constriction.stream.stack.AnsCoder()
            enc.encode_reverse(idx, self._get_model())
            words = np.ascontiguousarray(enc.get_compressed(), "<u4").tobytes()
        low = _pack_low((v & ((1 << r) - 1)).astype(np.uint8), r)
        return np.array([n, len(words) // 4], "<u4").tobytes() + words + low

    def decode(self, encoded, out: np.ndarray) -> np.ndarray:
        import constriction

        self._need_table()
        what = "value16 chunk"
        buf = np.frombuffer(encoded, np.uint8)
        if out.size % 2:
            raise FormatError(f"{what}: BF16 output of odd size {out.size}")
        if buf.size < HEADER:
            raise FormatError(f"{what}: payload of {buf.size} bytes is shorter than the 8-byte header")
        n, W = (int(x) for x in buf[:8].view("<u4"))
        r = self.low_bits
        if n != out.size // 2:
            raise FormatError(f"{what}: holds {n} values, expected {out.size // 2}")
        L = (n * r + 7) // 8
        if buf.size != HEADER + 4 * W + L:
            raise FormatError(f"{what}: payload is {buf.size} bytes, its header implies {HEADER + 4 * W + L}")
        A = self._syms.size
        if n == 0 or A == 1:
            if W:
                raise FormatError(f"{what}: {W} words where none are coded")
            idx = np.zeros(n, np.int64)
        else:
            if W == 0:
                raise FormatError(f"{what}: no words for {n} values")
            words = buf[HEADER:HEADER + 4 * W].view("<u4").astype(np.uint32)
            try:
                dec = constriction.stream.stack.AnsCoder(words)
                idx = np.asarray(dec.decode(self._get_model(), n))
                left = not dec.is_empty()
            except Exception as exc:  # noqa: BLE001  (constriction raises its own types on bad data)
                raise FormatError(f"{what}: undecodable ans stream ({type(exc).__name__}: {exc})") from None
            if left:
                raise FormatError(f"{what}: ans stream has data left after {n} values")
            if idx.size != n or (n and (int(idx.min()) < 0 or int(idx.max()) >= A)):
                raise FormatError(f"{what}: ans stream decoded to invalid symbols")
        v = (self._syms[idx] << r).astype(np.uint16)
        if r:
            v |= _unpack_low(buf[HEADER + 4 * W:], n, r)
        out[:] = v.view(np.uint8)
        return out

    def streams(self, decoded: np.ndarray, encoded: bytes) -> list[StreamStat]:
        r = self.low_bits or 0
        d = np.ascontiguousarray(decoded, np.uint8).reshape(-1)
        n = d.size // 2
        v = d[: 2 * n].view("<u2")
        buf = np.frombuffer(encoded, np.uint8)
        L = (n * r + 7) // 8
        spent_s = 8 * max(0, buf.size - L)
        name = "value" if r == 0 else f"value >> {r}"
        out = [StreamStat(name, n, entropy_bits_of_counts(np.bincount(v >> r, minlength=65536 >> r)), spent_s)]
        if r:
            out.append(StreamStat(f"low {r} bits", n, entropy_bits_of_counts(
                np.bincount(v & ((1 << r) - 1), minlength=1 << r)), 8 * min(L, buf.size)))
        return out


def _exponent_cost(hist: np.ndarray, n: int, source, dtype: str):
    """(estimated frame bits, fitted codec) of `exponent` with k in 0..3 on this tensor."""
    from . import huffman
    from .exponent import Exponent, stream_sizes, HEADER as EH

    e = Exponent(candidates=[0, 1, 2, 3]).fit(source, dtype)
    k = e.mantissa_bits
    h15 = hist.reshape(2, -1).sum(axis=0)
    counts = h15.reshape(256 << k, -1).sum(axis=1)
    nbits = int((counts * e.lengths.astype(np.int64)).sum())
    nchunks = max(1, -(-2 * n // DEFAULT_CHUNK))
    E, R = stream_sizes(n, nbits, k)
    bits = 8 * (E + R) + nchunks * 8 * (EH + huffman.segment_table_size(e.segments) + 8) + 8 * len(json.dumps(e.get_config()))
    return bits, e
