"""Format 1.1 packed metadata: frame configs and manifests as zstd frames with a built-in dictionary."""
from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

import codec
from codec.checksum import xxh64
from codec.errors import CodecError, FormatError, UnsupportedVersionError
from codec.formats import metapack
from codec.formats.frame import FIXED, FLAG_PACKED_CONFIG, parse_frame
from codec.formats.nncfile import FILE_FLAG_PACKED_MANIFEST, FILE_HEADER, NncFile

TEXT = b"packed metadata keeps small files small. " * 40


def test_dictionary_is_frozen():
    # Part of format 1.1: a changed byte would make every packed frame written so far unreadable.
    assert hashlib.sha256(metapack.DICTIONARY).hexdigest() == metapack.DICTIONARY_SHA256 == \
        "484d8103b00a442144acce61817128c10d97bbb3aec26f33ef0161df8c8159f2"


def test_pack_roundtrip_and_gain():
    blob = (b'{"codec":{"batch":24,"dtype":"bfloat16","eval_path":"lean-llama-1","id":"llm",'
            b'"model_sha256":"' + b"ab" * 32 + b'"},"dtype":"U8","shape":[123]}')
    packed = metapack.pack(blob)
    assert metapack.unpack(packed, 1 << 20, "t") == blob
    assert len(packed) < len(blob) * 0.6


@pytest.mark.parametrize("mutate", [
    lambda b: b + b"x",                       # bytes after the zstd frame
    lambda b: b[:-1],                         # truncated
    lambda b: b[:3],                          # no frame header
    lambda b: b"",
    lambda b: b"\x28\xb5\x2f\xfd" + b"\x00" * 8,
])
def test_unpack_rejects_damage(mutate):
    packed = metapack.pack(b'{"a":' + b"1" * 300 + b"}")
    with pytest.raises(FormatError):
        metapack.unpack(mutate(packed), 1 << 20, "t")


def test_unpack_bounds_output():
    import zstandard

    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (4 << 20))   # 4 MiB in a few hundred bytes
    with pytest.raises(FormatError, match="declares"):
        metapack.unpack(bomb, 1 << 20, "t")
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(b"{}")
    with pytest.raises(FormatError, match="declares"):
        metapack.unpack(undeclared, 1 << 20, "t")


@pytest.fixture(scope="module")
def packed_frame():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_v1_1 import frame_bytes

    return frame_bytes()


def test_packed_frame_is_1_1_and_others_stay_1_0(packed_frame):
    assert packed_frame[5] == 1 and struct.unpack_from("<H", packed_frame, 6)[0] & FLAG_PACKED_CONFIG
    plain = codec.compress(np.frombuffer(TEXT, np.uint8), codec={"id": "zstd", "level": 3})
    assert plain[5] == 0 and struct.unpack_from("<H", plain, 6)[0] == 0   # 1.0 bytes, as before


def _reseal(frame: bytes, minor=None, flags=None, config=None) -> bytes:
    """Rewrite header fields and recompute the header checksum (a forger's frame, not noise)."""
    head = bytearray(frame[:FIXED.size])
    (magic, major, mi, fl, dec, cs, ch, cfg_len, n_sec, id_len, res) = FIXED.unpack(head)
    body = frame[FIXED.size:]
    cfg_start = id_len
    old_cfg = body[cfg_start:cfg_start + cfg_len]
    new_cfg = old_cfg if config is None else config
    rest = body[cfg_start + cfg_len:]
    dir_len = n_sec * 32
    directory = bytearray(rest[:dir_len])
    shift = len(new_cfg) - len(old_cfg)
    for k in range(n_sec):      # section offsets move with the config's length
        off = struct.unpack_from("<Q", directory, k * 32 + 8)[0]
        struct.pack_into("<Q", directory, k * 32 + 8, off + shift)
    fixed = FIXED.pack(magic, major, mi if minor is None else minor, fl if flags is None else flags,
                       dec, cs, ch, len(new_cfg), n_sec, id_len, res)
    head_bytes = fixed + body[:id_len] + new_cfg + bytes(directory)
    return head_bytes + struct.pack("<Q", xxh64(head_bytes)) + rest[dir_len + 8:]


def test_packed_flag_is_reserved_in_1_0(packed_frame):
    assert parse_frame(_reseal(packed_frame)).decode().tobytes()          # the reseal itself is faithful
    with pytest.raises(UnsupportedVersionError, match="reserved"):
        parse_frame(_reseal(packed_frame, minor=0))
    with pytest.raises(UnsupportedVersionError):
        parse_frame(_reseal(packed_frame, minor=2))


@pytest.mark.parametrize("config", [
    b"not zstd at all",
    metapack.pack(b"[1, 2, 3]"),                       # valid zstd, JSON but not an object
    metapack.pack(b'{"codec": {"id": "raw"}}'),        # names another codec than the header
    metapack.pack(b"\xff\xfe{}"),                      # not UTF-8
])
def test_forged_packed_configs_are_refused(packed_frame, config):
    with pytest.raises(FormatError):
        parse_frame(_reseal(packed_frame, config=config))


def test_every_header_flip_and_cut_of_a_packed_frame_is_an_error(packed_frame):
    n_head = FIXED.size + packed_frame[34] + struct.unpack_from("<I", packed_frame, 28)[0] + 2 * 32 + 8
    for pos in range(n_head):
        for bit in (0, 3, 7):
            bad = bytearray(packed_frame)
            bad[pos] ^= 1 << bit
            with pytest.raises(CodecError):
                parse_frame(bytes(bad)).decode()
    for cut in range(len(packed_frame)):
        with pytest.raises(CodecError):
            parse_frame(packed_frame[:cut]).decode()


def test_packed_file_roundtrip_and_damage(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_v1_1 import TEXT as FIX_TEXT, file_bytes

    blob = file_bytes()
    sig, major, minor, flags, _ = FILE_HEADER.unpack(blob[:FILE_HEADER.size])
    assert (major, minor, flags) == (1, 1, FILE_FLAG_PACKED_MANIFEST)
    path = tmp_path / "t.nnc"
    path.write_bytes(blob)
    with NncFile(path) as f:
        assert f.manifest["format"] == [1, 1] and f.container == "bytes"
    out = tmp_path / "t.txt"
    codec.decompress_file(path, out)
    assert out.read_bytes() == FIX_TEXT
    # the packed-manifest flag in a 1.0 header is a reserved bit
    bad = bytearray(blob)
    bad[9] = 0
    path.write_bytes(bytes(bad))
    with pytest.raises(UnsupportedVersionError):
        NncFile(path)
    # every cut and every flipped manifest or footer byte is an error
    m_off, m_len = struct.unpack_from("<QQ", blob, len(blob) - 32)
    for pos in list(range(m_off, len(blob))):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(CodecError):
            codec.decompress_file(path, tmp_path / "o", overwrite=True)
    for cut in range(0, len(blob), 7):
        path.write_bytes(blob[:cut])
        with pytest.raises(CodecError):
            codec.decompress_file(path, tmp_path / "o", overwrite=True)
