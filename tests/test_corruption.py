"""Hostile input: truncation, bit flips, malicious headers. A codec error or a correct decode, never else."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec
from codec.errors import CodecError, FormatError, UnsupportedVersionError
from codec.formats.frame import parse_frame
from codec.formats.nncfile import NncFile
from codec.safetensors_header import parse_header
from conftest import sha256


@pytest.fixture
def small_nnc(small_safetensors, tmp_path):
    out = tmp_path / "small.nnc"
    codec.compress_file(small_safetensors, out, chunk_size=256)
    return out


def _decode_all(path) -> None:
    """Open, parse and decode everything; raise on any problem."""
    codec.verify(path, workers=1)


def test_truncation_at_every_prefix(small_nnc, tmp_path):
    data = small_nnc.read_bytes()
    p = tmp_path / "t.nnc"
    for n in range(len(data)):
        p.write_bytes(data[:n])
        with pytest.raises(CodecError):
            _decode_all(p)


def _structural_ranges(path) -> list[tuple[int, int]]:
    """Byte ranges of the file header, every frame header and chunk index, the manifest and footer."""
    size = path.stat().st_size
    with NncFile(path) as nf:
        ranges = [(0, 16), (size - 32, size)]
        m_off = struct.unpack_from("<Q", path.read_bytes(), size - 32)[0]
        ranges.append((m_off, size - 32))
        for e in nf.entries:
            fr = nf.frame(e)
            idx = fr.sections[1]
            ranges.append((e.offset, e.offset + idx.offset + idx.length))
    return ranges


def test_every_bit_flipped_in_headers_and_indexes(small_nnc, tmp_path):
    data = bytearray(small_nnc.read_bytes())
    original = bytes(data)
    p = tmp_path / "f.nnc"
    flips = 0
    for start, end in _structural_ranges(small_nnc):
        for pos in range(start, end):
            for bit in range(8):
                data[pos] ^= 1 << bit
                p.write_bytes(data)
                try:
                    _decode_all(p)
                except CodecError:
                    pass
                else:  # only acceptable if the flipped bit is truly irrelevant (none should be)
                    raise AssertionError(f"flip of bit {bit} at byte {pos} went unnoticed")
                data[pos] ^= 1 << bit
                flips += 1
    assert bytes(data) == original and flips > 5000


def test_payload_bit_flips_are_detected(small_nnc, tmp_path):
    original = small_nnc.read_bytes()
    data = bytearray(original)
    rng = np.random.default_rng(0)
    p = tmp_path / "p.nnc"
    with NncFile(small_nnc) as nf:
        spans = []
        for e in nf.entries:
            fr = nf.frame(e)
            pay = fr.sections[2]
            spans.append((e.offset + pay.offset, e.offset + pay.offset + pay.length))
    for _ in range(300):
        a, b = spans[rng.integers(len(spans))]
        pos = int(rng.integers(a, b))
        data[pos] ^= 1 << int(rng.integers(8))
        p.write_bytes(data)
        with pytest.raises(CodecError):
            _decode_all(p)
        data[pos] = original[pos]


def test_errors_name_the_problem(small_nnc, tmp_path):
    data = bytearray(small_nnc.read_bytes())
    p = tmp_path / "e.nnc"
    p.write_bytes(b"PK\x03\x04" + bytes(data[4:]))
    with pytest.raises(FormatError, match="not a .nnc file"):
        codec.open(p)
    bumped = bytearray(data)
    bumped[8] = 2  # major version
    p.write_bytes(bumped)
    with pytest.raises(UnsupportedVersionError, match="2.0 is not supported"):
        codec.open(p)
    reserved = bytearray(data)
    reserved[10] = 1
    p.write_bytes(reserved)
    with pytest.raises(UnsupportedVersionError, match="reserved"):
        codec.open(p)
    p.write_bytes(data[:-5])
    with pytest.raises(FormatError, match="footer"):
        codec.open(p)


def test_newer_frame_version_and_must_understand_section():
    f = bytearray(codec.compress(np.arange(100, dtype=np.int32)))
    g = bytearray(f)
    g[5] = 9  # minor version 1.9: header checksum still must pass first
    with pytest.raises(CodecError, match="checksum"):
        parse_frame(bytes(g))
    # rebuild a valid header with minor 9 -> unsupported version, clearly worded
    from codec.formats.frame import FIXED
    from codec.checksum import xxh64

    (magic, major, minor, flags, dec, cs, n, cfg_len, n_sec, id_len, res) = FIXED.unpack_from(f, 0)
    hlen = FIXED.size + id_len + cfg_len + n_sec * 32 + 8
    g = bytearray(f)
    g[5] = 9
    g[hlen - 8:hlen] = struct.pack("<Q", xxh64(bytes(g[:hlen - 8])))
    with pytest.raises(UnsupportedVersionError, match="newer"):
        parse_frame(bytes(g))
    # an unknown section type marked must-understand
    g = bytearray(f)
    dir0 = FIXED.size + id_len + cfg_len
    g[dir0 + 32:dir0 + 34] = struct.pack("<H", 99)  # second section's type
    g[hlen - 8:hlen] = struct.pack("<Q", xxh64(bytes(g[:hlen - 8])))
    with pytest.raises(UnsupportedVersionError, match="must-understand section type 99"):
        parse_frame(bytes(g))


def _st(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


@pytest.mark.parametrize("blob, match", [
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "outside"),
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "overlaps"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "hole"),
    (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover"),
    (_st({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}}, b"\0" * 4), "span"),
    (_st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
    (_st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4), "duplicate"),
    (_st(b'{"\xff": 1}'), "UTF-8"),
    (_st(b"{nope"), "JSON"),
    (_st({"a": 1}), "not an object"),
    (_st({}, length=10**12), "exceeds"),
    (_st({}, length=50), "past the end"),
    (_st({"__metadata__": {"k": 1}}), "__metadata__"),
    (b"\x01\x02", "8-byte"),
])
def test_malicious_safetensors_headers(blob, match, tmp_path):
    with pytest.raises(FormatError, match=match):
        parse_header(blob, len(blob))
    p = tmp_path / "evil.safetensors"
    p.write_bytes(blob)
    with pytest.raises(FormatError):
        codec.compress_file(p)
    assert not (tmp_path / "evil.safetensors.nnc").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_fuzz_safetensors_parser(blob):
    try:
        parse_header(blob, len(blob))
    except FormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2**64 - 1))
def test_fuzz_frame_parser(blob, seed):
    frame = bytearray(codec.compress(np.arange(64, dtype=np.uint16)))
    # mix random bytes into a real frame so the fuzzer gets past the magic
    rng = np.random.default_rng(seed % 2**32)
    for b in blob[:32]:
        frame[int(rng.integers(len(frame)))] = b
    for candidate in (bytes(frame), blob, bytes(frame[: len(blob)])):
        try:
            out = codec.decompress(candidate)
        except CodecError:
            continue
        assert out.tobytes() == np.arange(64, dtype=np.uint16).tobytes()


def test_load_file_detects_every_damage_to_tensor_frames(small_nnc, tmp_path):
    # load_file reads frames in pieces and decodes them all at once on 2 threads: every flipped
    # bit of a tensor frame's headers and indexes, and every truncation, must raise a codec
    # error; a flipped payload bit must raise one or leave every tensor exactly as written (it
    # checks the payload checksum only when a chunk fails, and padding bits can be don't-cares)
    original = small_nnc.read_bytes()
    exact = codec.load_file(small_nnc)
    p = tmp_path / "l.nnc"
    with NncFile(small_nnc) as nf:
        frames = [(e, nf.frame(e)) for e in nf.entries if e.role == "tensor"]
    structural, payload = [], []
    for e, fr in frames:
        idx = fr.sections[1]
        structural += range(e.offset, e.offset + idx.offset + idx.length)
    rng = np.random.default_rng(4)
    for e, fr in frames:
        pay = fr.sections[2]
        payload += [int(x) for x in rng.integers(e.offset + pay.offset, e.offset + pay.offset + pay.length, 40)]
    data = bytearray(original)
    caught = 0
    for pos in structural + payload:
        for bit in range(8):
            data[pos] ^= 1 << bit
            p.write_bytes(data)
            try:
                got = codec.load_file(p, workers=2)
            except CodecError:
                caught += 1
            else:
                assert pos in payload, f"flip of bit {bit} at byte {pos} went unnoticed"
                assert list(got) == list(exact)
                assert all(got[k].tobytes() == exact[k].tobytes() for k in exact), \
                    f"flip of bit {bit} at byte {pos} changed a tensor silently"
            data[pos] ^= 1 << bit
    positions = structural + payload
    assert caught >= 8 * len(structural) + 6 * len(payload)    # nearly all payload flips matter
    for n in range(0, len(original), 7):
        p.write_bytes(original[:n])
        with pytest.raises(CodecError):
            codec.load_file(p, workers=2)
    assert bytes(data) == original and len(positions) > 300
