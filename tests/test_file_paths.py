"""The whole-file paths: the original's XXH3 in the manifest, the decode and encode streams over
all frames, opt-in fsync, and reads into reused buffers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xxhash

import codec
from codec import datasets
from codec.checksum import xxh64
from codec.cli import main
from codec.formats.buffer import PreadBuffer
from codec.formats.frame import encode_frame, iter_decoded_frames, parse_frame
from codec.formats.metapack import pack
from codec.formats.nncfile import FILE_FLAG_PACKED_MANIFEST, FILE_HEADER, FOOTER, NncFile
from codec.source import FileRangeSource
from conftest import sha256


def rewrite_manifest(path, change) -> None:
    """Edit a .nnc file's manifest in place (footer checksum fixed up): what a damaged or
    hand-made file could hold."""
    data = path.read_bytes()
    with NncFile(path) as nf:
        man = json.loads(json.dumps(nf.manifest))
    change(man)
    m_off, _, _, magic = FOOTER.unpack(data[-FOOTER.size:])
    blob = json.dumps(man, sort_keys=True, separators=(",", ":")).encode()
    if FILE_HEADER.unpack(data[:FILE_HEADER.size])[3] & FILE_FLAG_PACKED_MANIFEST:
        blob = pack(blob)
    path.write_bytes(data[:m_off] + blob + FOOTER.pack(m_off, len(blob), xxh64(blob), magic))


@pytest.fixture
def compressed(small_safetensors, tmp_path):
    out = tmp_path / "small.nnc"
    codec.compress_file(small_safetensors, out)
    return small_safetensors, out


def test_manifest_records_the_originals_xxh3(compressed):
    src, nnc = compressed
    with NncFile(nnc) as nf:
        man = nf.manifest
    assert man["original_xxh3"] == f"{xxhash.xxh3_64_intdigest(src.read_bytes()):016x}"
    assert man["original_sha256"] == sha256(src)
    assert codec.verify(nnc).check == "XXH3"
    assert codec.verify(nnc, sha256=True).check == "sha256"


def test_a_wrong_xxh3_stops_decompression(compressed, tmp_path):
    _, nnc = compressed
    rewrite_manifest(nnc, lambda m: m.update(original_xxh3="0123456789abcdef"))
    back = tmp_path / "back.safetensors"
    with pytest.raises(codec.ChecksumError, match="XXH3 of the restored file is"):
        codec.decompress_file(nnc, back)
    assert not back.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.nnc", "small.safetensors"]
    with pytest.raises(codec.ChecksumError, match="XXH3"):
        codec.verify(nnc)
    assert codec.verify(nnc, sha256=True).ok       # the sha256 still matches
    codec.decompress_file(nnc, back, sha256=True)


def test_a_wrong_sha256_is_caught_on_request(compressed, tmp_path):
    _, nnc = compressed
    rewrite_manifest(nnc, lambda m: m.update(original_sha256="0" * 64))
    assert codec.verify(nnc).check == "XXH3"
    with pytest.raises(codec.ChecksumError, match="sha256 of the restored file is"):
        codec.verify(nnc, sha256=True)
    with pytest.raises(codec.ChecksumError, match="sha256"):
        codec.decompress_file(nnc, tmp_path / "back", sha256=True)
    assert not (tmp_path / "back").exists()


def test_a_file_without_xxh3_checks_the_sha256(compressed, tmp_path):
    src, nnc = compressed
    rewrite_manifest(nnc, lambda m: m.pop("original_xxh3"))
    assert codec.verify(nnc).check == "sha256"
    back = tmp_path / "back.safetensors"
    codec.decompress_file(nnc, back)
    assert sha256(back) == sha256(src)
    rewrite_manifest(nnc, lambda m: m.update(original_sha256="f" * 64))
    with pytest.raises(codec.ChecksumError, match="sha256"):
        codec.verify(nnc)


@pytest.mark.parametrize("bad", ["xyz", "0123456789ABCDEF", "0" * 15, 12345, None, ["0" * 16]])
def test_a_malformed_xxh3_is_refused(compressed, bad):
    _, nnc = compressed
    rewrite_manifest(nnc, lambda m: m.update(original_xxh3=bad))
    with pytest.raises(codec.FormatError, match="original_xxh3"):
        codec.verify(nnc)


def test_cli_names_the_check(compressed, capsys):
    _, nnc = compressed
    assert main(["verify", str(nnc)]) == 0
    assert "XXH3 matches" in capsys.readouterr().out
    assert main(["verify", "--sha256", str(nnc)]) == 0
    assert "sha256 matches" in capsys.readouterr().out


def test_fsync_only_when_asked(small_safetensors, tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    out = tmp_path / "a.nnc"
    codec.compress_file(small_safetensors, out)
    codec.decompress_file(out, tmp_path / "a.safetensors")
    assert synced == []
    codec.compress_file(small_safetensors, tmp_path / "b.nnc", sync=True)
    assert len(synced) == 1
    codec.decompress_file(out, tmp_path / "b.safetensors", sync=True)
    assert len(synced) == 2
    assert main(["decompress", "--sync", "-o", str(tmp_path / "c.safetensors"), str(out)]) == 0
    assert len(synced) == 3
    assert sha256(tmp_path / "c.safetensors") == sha256(small_safetensors)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("verify_payload", [False, True])
def test_decode_stream_over_frames_is_in_order(workers, verify_payload, monkeypatch):
    from codec.policy import resolve
    from codec.source import ArraySource

    rng = np.random.default_rng(3)
    frames, datas = [], []
    for k in range(12):
        dtype = ("U8", "F32", "BF16")[k % 3]
        n = int(rng.integers(0, 10)) * 64
        data = rng.integers(0, 256, n, dtype=np.uint8)
        shape = [n // {"U8": 1, "F32": 4, "BF16": 2}[dtype]]
        frames.append(encode_frame(ArraySource(data), resolve("auto", dtype, None).fit(ArraySource(data), dtype),
                                   dtype, shape, chunk_size=64))
        datas.append(data)
    monkeypatch.setattr("codec.formats.frame._TASK_BYTES", 128)     # tasks of 2 chunks, across frames
    parsed = [parse_frame(f, where=f"frame {k}") for k, f in enumerate(frames)]
    got: dict[int, list] = {}
    order = []
    for fr, chunk in iter_decoded_frames(parsed, workers, verify_payload):
        k = parsed.index(fr)
        order.append(k)
        got.setdefault(k, []).append(chunk.copy())
    assert order == sorted(order)
    for k, data in enumerate(datas):
        back = np.concatenate(got[k]) if k in got else np.empty(0, np.uint8)
        assert back.tobytes() == data.tobytes()
        one = list(parsed[k].iter_decoded(workers, verify_payload))       # one frame's own stream
        assert b"".join(c.tobytes() for c in one) == data.tobytes()
    # damage in a middle frame's payload: reported for that frame, as damage (its checksum)
    bad = bytearray(frames[7])
    bad[-3] ^= 0x40
    parsed[7] = parse_frame(bytes(bad), where="frame 7")
    with pytest.raises(codec.ChecksumError, match="frame 7"):
        for _ in iter_decoded_frames(parsed, workers, verify_payload):
            pass


def test_scratch_reads_reuse_one_buffer_per_thread(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        src = FileRangeSource(fd, 100, data.size - 100)
        a, b = src.read(0, 1000), src.read(1000, 1000)
        assert a.tobytes() == data[100:1100].tobytes() and b.tobytes() == data[1100:2100].tobytes()
        s1 = src.read_scratch(0, 1000)
        assert s1.tobytes() == data[100:1100].tobytes()
        s2 = src.read_scratch(5000, 1000)
        assert s2.tobytes() == data[5100:6100].tobytes()
        assert np.shares_memory(s1, s2)                      # the same buffer, overwritten
        assert a.tobytes() == data[100:1100].tobytes()       # read() results are their own
        big = src.read_scratch(0, 2 << 20)                   # grows when asked for more
        assert big.tobytes() == data[100:100 + (2 << 20)].tobytes()
        pieces = [p.copy() for p in src.iter_chunks(1 << 20)]
        assert np.concatenate(pieces).tobytes() == data[100:].tobytes()
        with pytest.raises(EOFError):
            FileRangeSource(fd, data.size - 10, 20).read_scratch(0, 20)

        buf = PreadBuffer(fd)
        v1 = buf.view(10, 2000)
        assert bytes(v1) == data[10:2000].tobytes() and buf[10:2000] == data[10:2000].tobytes()
        v2 = buf.view(data.size - 50, data.size)
        assert bytes(v2) == data[-50:].tobytes()
        with pytest.raises(codec.FormatError):      # TruncatedError: the file ends first
            PreadBuffer(fd, data.size + 100).view(data.size - 10, data.size + 10)
    finally:
        os.close(fd)


def test_whole_file_round_trip_with_many_frames(tmp_path):
    """Many small frames and every worker count: the streams keep the file's byte order."""
    rng = np.random.default_rng(11)
    tensors = {f"t{k}": ("F32", [int(n)], rng.standard_normal(int(n)).astype(np.float32))
               for k, n in enumerate(rng.integers(0, 3000, 40))}
    src = datasets.write_safetensors(tmp_path / "many.safetensors", tensors, None)
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"m{workers}.nnc"
        codec.compress_file(src, out, workers=workers, chunk_size=1024)
        outs.append(out.read_bytes())
        back = tmp_path / f"m{workers}.safetensors"
        codec.decompress_file(out, back, workers=workers)
        assert sha256(back) == sha256(src)
        assert codec.verify(out, workers=workers).ok
    assert outs[0] == outs[1] == outs[2]


def test_outputs_get_the_usual_permissions(small_safetensors, tmp_path):
    """Outputs are created as open() would (0o666 less the umask), not private to their owner."""
    mask = os.umask(0o022)
    try:
        out = tmp_path / "p.nnc"
        codec.compress_file(small_safetensors, out)
        codec.decompress_file(out, tmp_path / "p.safetensors")
        assert (out.stat().st_mode & 0o777) == 0o644
        assert ((tmp_path / "p.safetensors").stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(mask)


def test_cluster_finish_checks_the_xxh3(compressed, tmp_path):
    """The distributed decompress checks the restored file as decompress_file does (XXH3 where
    the manifest has it, else sha256), and so does its re-run check."""
    from codec.distributed import task_check_done, task_dfinish, task_dplan

    src, nnc = compressed
    out = tmp_path / "restored.safetensors"
    plan = task_dplan(str(nnc), str(out))
    assert plan.check == "XXH3"
    Path(plan.tmp).write_bytes(src.read_bytes()[:-1] + bytes([src.read_bytes()[-1] ^ 1]))
    with pytest.raises(codec.ChecksumError, match="XXH3 of the restored file"):
        task_dfinish(plan, str(out), False)
    assert not out.exists() and not Path(plan.tmp).exists()
    plan = task_dplan(str(nnc), str(out))
    Path(plan.tmp).write_bytes(src.read_bytes())
    task_dfinish(plan, str(out), False)
    assert sha256(out) == sha256(src)
    assert task_check_done("decompress", str(nnc), str(out)) == "done"
    out.write_bytes(src.read_bytes()[:-1] + bytes([src.read_bytes()[-1] ^ 1]))
    assert task_check_done("decompress", str(nnc), str(out)) == "other"
    rewrite_manifest(nnc, lambda m: m.pop("original_xxh3"))
    assert task_dplan(str(nnc), str(tmp_path / "x")).check == "sha256"


def test_huge_reads_are_not_kept_per_thread(tmp_path, monkeypatch):
    """A read past the keep limit gets a buffer of its own, freed with it (a pool thread lives on)."""
    import codec.formats.buffer as fb
    import codec.source as cs

    monkeypatch.setattr(fb, "SCRATCH_KEEP", 1 << 20)
    monkeypatch.setattr(fb, "_scratch", fb.ThreadScratch())     # this thread's buffers: none yet
    monkeypatch.setattr(cs, "_scratch", fb.ThreadScratch())
    data = np.random.default_rng(2).integers(0, 256, 3 << 20, dtype=np.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        src = FileRangeSource(fd, 0, data.size)
        small = src.read_scratch(0, 1000)
        big = src.read_scratch(0, 2 << 20)
        assert big.tobytes() == data[:2 << 20].tobytes()
        assert not np.shares_memory(small, big)
        assert np.shares_memory(small, src.read_scratch(10, 1000))     # the kept one, still
        buf = PreadBuffer(fd)
        v = buf.view(0, 1000)
        vb = buf.view(0, 2 << 20)
        assert bytes(vb) == data[:2 << 20].tobytes()
        assert bytes(buf.view(5, 10)) == data[5:10].tobytes() and bytes(v[:5]) == data[5:10].tobytes()
    finally:
        os.close(fd)


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_stream_parses_frames_as_it_goes(workers, monkeypatch):
    """Frames are pulled from the caller's iterable only as far as the look-ahead: decoding a
    file parses its frames as their turn comes, so memory does not grow with their number."""
    from codec.policy import resolve
    from codec.source import ArraySource

    monkeypatch.setattr("codec.formats.frame._TASK_BYTES", 128)
    data = np.arange(256, dtype=np.uint8)
    frame = encode_frame(ArraySource(data), resolve("auto", "U8", None).fit(ArraySource(data), "U8"), "U8", [256],
                         chunk_size=64)
    pulled = []

    def frames():
        for k in range(40):
            pulled.append(k)
            yield parse_frame(frame, where=f"frame {k}")

    stream = iter_decoded_frames(frames(), workers, verify_payload=False)
    fr, chunk = next(stream)
    assert chunk.tobytes() == data[:64].tobytes()
    assert len(pulled) <= 2 + 2 * workers        # 2 chunks per task, 2 * workers tasks ahead
    assert sum(1 for _ in stream) == 40 * 4 - 1 and len(pulled) == 40
