"""Frozen format-1.0 and 1.1 files, and the fixtures of codec payload additions, must keep decoding
to the same bytes, forever."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

import codec
from codec.entropy.exponent import stream_sizes
from codec.formats.frame import parse_frame

HERE = Path(__file__).parent / "fixtures" / "v1.0"
EXPECTED = json.loads((HERE / "expected.json").read_text())
V11 = Path(__file__).parent / "fixtures" / "v1.1"
EXPECTED_11 = json.loads((V11 / "expected.json").read_text())
ADD = Path(__file__).parent / "fixtures" / "additions"      # codec payload additions (SPEC 6)
EXPECTED_ADD = json.loads((ADD / "expected.json").read_text())
ALL = [(HERE, n, EXPECTED[n]) for n in sorted(EXPECTED)] + [(V11, n, EXPECTED_11[n]) for n in sorted(EXPECTED_11)] \
    + [(ADD, n, EXPECTED_ADD[n]) for n in sorted(EXPECTED_ADD)]


@pytest.mark.parametrize("where, name, spec", ALL, ids=[f"{d.name}/{n}" for d, n, _ in ALL])
def test_fixture_decodes(where, name, spec, tmp_path):
    path = where / name
    want = spec["decoded_sha256"]
    if name.endswith(".nncf"):
        fr = parse_frame(path.read_bytes())
        assert hashlib.sha256(fr.decode().tobytes()).hexdigest() == want
        want_codec = spec["codec"]
        assert fr.config["codec"]["id"] == (want_codec["id"] if isinstance(want_codec, dict) else want_codec)
    else:
        out = tmp_path / "restored"
        codec.decompress_file(path, out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want


# zstd's encoder output may change between libzstd releases (its decoder never does), so only
# our own coders are held to byte-identical encoding.
# The F16 and F32 bytegroup frames left the list on 2026-11-25: their 64- and 128-value chunks,
# stored raw in 1.0, now take plane method 4 (`bits`, SPEC section 6), 4-10 bytes smaller; the
# encoder's bytes for that method are held by the additions fixture bytegroup-bits-f32.nncf, and
# the 1.0 frames still decode (test_fixture_decodes).
GOLDEN_ENCODE = sorted(n for n in EXPECTED if n.endswith(".nncf") and "-zstd-" not in n
                       and n != "frame-bytegroup-i32.nncf"   # integer planes may use zstd
                       and n not in ("frame-bytegroup-f16.nncf", "frame-bytegroup-f32.nncf"))


@pytest.mark.parametrize("name", GOLDEN_ENCODE)
def test_encoder_still_writes_golden_bytes(name):
    """Same input, same options -> the exact frozen bytes (deterministic, stable encoder)."""
    import sys

    sys.path.insert(0, str(HERE.parent))
    from make_v1_0 import inputs

    spec = EXPECTED[name]
    spec_codec = spec["codec"]
    if spec_codec in ("exponent", "bytegroup"):     # the 1.0 layout; new files have 6 segments
        spec_codec = {"id": spec_codec, "segments": 4}
    frame = codec.compress(inputs()[spec["input"]], codec=spec_codec, chunk_size=256, dtype=spec.get("dtype"))
    assert frame == (HERE / name).read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED_ADD))
def test_addition_fixtures_use_their_method(name):
    """Each addition fixture exercises what it was written for (bytegroup: the plane methods;
    exponent: the segment count, in the config and in every chunk's segment table)."""
    spec = EXPECTED_ADD[name]
    if "manifest_keys" in spec:     # a whole file: the manifest holds the new member
        from codec.formats.nncfile import NncFile

        with NncFile(ADD / name) as nf:
            assert set(spec["manifest_keys"]) <= set(nf.manifest)
        assert codec.verify(ADD / name).check == "XXH3"
        return
    fr = parse_frame((ADD / name).read_bytes())
    assert fr.chunk_count > 1
    for i in range(fr.chunk_count):
        payload = bytes(fr.encoded_chunk(i))
        if "plane_methods" in spec:
            assert [payload[5 * p] for p in range(len(spec["plane_methods"]))] == spec["plane_methods"]
        if "segments" in spec:
            assert fr.config["codec"]["segments"] == spec["segments"]
            if spec["codec"] != "exponent":
                continue
            c = fr.decoder()
            n, nbits = struct.unpack_from("<II", payload)
            E, R = stream_sizes(n, nbits, c.mantissa_bits)
            assert len(payload) == 8 + E + R + 4 * (spec["segments"] - 1)


def test_bytegroup_segments6_encoder_still_writes_golden_bytes():
    import sys

    sys.path.insert(0, str(ADD.parent))
    from make_additions import f32_weights

    frame = codec.compress(f32_weights(), dtype="F32", codec={"id": "bytegroup", "segments": 6}, chunk_size=65536)
    assert frame == (ADD / "bytegroup-segments6-f32.nncf").read_bytes()
    assert codec.compress(f32_weights(), dtype="F32", codec="bytegroup", chunk_size=65536) == frame


def test_bytegroup_bits_encoder_still_writes_golden_bytes():
    import sys

    sys.path.insert(0, str(ADD.parent))
    from make_additions import f32_from_bf16_weights

    frame = codec.compress(f32_from_bf16_weights(), dtype="F32", codec={"id": "bytegroup", "segments": 6},
                           chunk_size=65536)
    assert frame == (ADD / "bytegroup-bits-f32.nncf").read_bytes()


def test_v1_bytegroup_frames_differ_only_by_bits_planes():
    # what left the 1.0 golden-encode list: every chunk the encoder writes differently is one
    # that 1.0 stored raw and that now has a bits plane, and is smaller
    import sys

    sys.path.insert(0, str(HERE.parent))
    from make_v1_0 import inputs

    for name, s in (("frame-bytegroup-f16.nncf", 2), ("frame-bytegroup-f32.nncf", 4)):
        spec = EXPECTED[name]
        old = parse_frame((HERE / name).read_bytes())
        new = parse_frame(codec.compress(inputs()[spec["input"]], codec={"id": "bytegroup", "segments": 4},
                                         chunk_size=256, dtype=spec.get("dtype")))
        assert new.chunk_count == old.chunk_count
        changed = 0
        for i in range(old.chunk_count):
            a, b = bytes(old.encoded_chunk(i)), bytes(new.encoded_chunk(i))
            if a != b:
                changed += 1
                assert len(b) < len(a) == 256 and 4 in [b[5 * p] for p in range(s)]
        assert changed
        assert hashlib.sha256(new.decode().tobytes()).hexdigest() == spec["decoded_sha256"]


def test_exponent_segments6_encoder_still_writes_golden_bytes():
    import sys

    sys.path.insert(0, str(ADD.parent))
    from make_additions import bf16_weights

    frame = codec.compress(bf16_weights(), dtype="BF16", codec={"id": "exponent", "segments": 6}, chunk_size=16384)
    assert frame == (ADD / "exponent-segments6-bf16.nncf").read_bytes()
    # the default layout is that one
    assert codec.compress(bf16_weights(), dtype="BF16", codec="exponent", chunk_size=16384) == frame
