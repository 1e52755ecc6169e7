"""compress_many / decompress_many on a real Dask LocalCluster (2 worker processes) and a process pool.

Every output is compared by sha256 with the single-machine `codec.compress_file` result (compress)
or with the original file (decompress). No mocks: real worker processes, one of them SIGKILLed.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import codec
from codec import datasets
from codec.distributed import compress_many, decompress_many

from conftest import sha256

distributed = pytest.importorskip("distributed")

CHUNK = 64 << 10        # small chunks and tasks, so a few MB make dozens of tasks
TASK = 256 << 10


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as lc, Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder of real weights: MiniLM embeddings + layer 0 in BF16 and F32, and an opaque file."""
    root = tmp_path_factory.mktemp("models")
    keep = lambda name: name.startswith("encoder.layer.0.") or (  # noqa: E731
        name.startswith("embeddings.") and "word_embeddings" not in name)
    for dt in ("BF16", "F32"):
        t = {k: v for k, v in datasets.minilm_tensors(dt).items() if keep(k)}
        sub = root / dt.lower()
        sub.mkdir()
        datasets.write_safetensors(sub / f"minilm-{dt.lower()}.safetensors", t, metadata={"format": "pt"})
    with open(root / "vocab.bin", "wb") as f:
        f.write((b"the quick brown fox " * 20000) + bytes(range(256)) * 64)
    return root


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> dict[str, str]:
    """sha256 of the single-machine compress_file output, by path relative to `models`."""
    out = tmp_path_factory.mktemp("ref")
    ref = {}
    for p in sorted(models.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(models))
            r = codec.compress_file(p, out / (p.name + ".nnc"), workers=1, chunk_size=CHUNK)
            ref[rel + ".nnc"] = sha256(r.output)
    assert len(ref) == 3
    return ref


def _outputs(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*.nnc"))}


def _no_temps(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_cluster_compress_matches_local_and_decompresses(cluster, models, reference, tmp_path):
    _, client = cluster
    events = []
    rep = compress_many([models], client, output_dir=tmp_path / "nnc", chunk_size=CHUNK, task_bytes=TASK,
                        progress=events.append)
    assert rep.ok, rep.summary()
    assert [f.status for f in rep.files] == ["done"] * 3
    assert _outputs(tmp_path / "nnc") == reference
    assert events[-1]["files_done"] == 3 and events[-1]["bytes_done"] == sum(f.original_size for f in rep.files)
    assert sum(e["event"] == "chunks" for e in events) > 20   # the files were split into many tasks
    _no_temps(tmp_path / "nnc")
    for f in rep.files:
        assert codec.verify(f.output).ok

    back = decompress_many(tmp_path / "nnc", client, output_dir=tmp_path / "back", task_bytes=TASK,
                           progress=False)
    assert back.ok, back.summary()
    for p in models.rglob("*"):
        if p.is_file():
            assert sha256(tmp_path / "back" / p.relative_to(models)) == sha256(p)
    _no_temps(tmp_path / "back")


def test_rerun_skips_finished_files(cluster, models, reference, tmp_path):
    _, client = cluster
    out = tmp_path / "nnc"
    assert compress_many(models, client, output_dir=out, chunk_size=CHUNK, progress=False).ok
    victim = out / "f32" / "minilm-f32.safetensors.nnc"
    victim.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.nnc")}
    rep = compress_many(models, client, output_dir=out, chunk_size=CHUNK, progress=False)
    assert rep.ok
    assert {Path(f.output).name: f.status for f in rep.files} == {
        "minilm-bf16.safetensors.nnc": "skipped", "minilm-f32.safetensors.nnc": "done", "vocab.bin.nnc": "skipped"}
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())   # skipped files untouched
    assert _outputs(out) == reference
    # something else at an output path is neither skipped nor replaced without overwrite
    (out / "vocab.bin.nnc").write_bytes(b"not an nnc file")
    rep = compress_many(models, client, output_dir=out, chunk_size=CHUNK, progress=False)
    assert [f.status for f in rep.failed] == ["failed"] and "exists" in rep.failed[0].error
    assert compress_many(models, client, output_dir=out, chunk_size=CHUNK, progress=False, overwrite=True).ok
    assert _outputs(out) == reference


def test_killed_worker_still_identical(cluster, models, reference, tmp_path):
    _, client = cluster
    before = client.run(os.getpid)
    killed = []

    def on_event(ev):
        if ev["event"] == "chunks" and not killed:   # some results are held by workers, more are running
            pid = sorted(before.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    rep = compress_many([models], client, output_dir=tmp_path / "nnc", chunk_size=CHUNK, task_bytes=TASK,
                        progress=on_event)
    assert killed
    assert rep.ok, rep.summary()
    assert _outputs(tmp_path / "nnc") == reference
    _no_temps(tmp_path / "nnc")
    client.wait_for_workers(2, timeout=60)   # the nanny restarts the killed worker
    deadline = time.time() + 30
    while killed[0] in client.run(os.getpid).values() and time.time() < deadline:
        time.sleep(0.2)
    assert killed[0] not in client.run(os.getpid).values()


def test_unreadable_inputs_reported_by_name(cluster, models, reference, tmp_path):
    _, client = cluster
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "dangling.bin").symlink_to(tmp_path / "nowhere")
    (bad / "broken.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    missing = tmp_path / "missing.safetensors"
    rep = compress_many([bad, missing, models / "vocab.bin"], client, output_dir=tmp_path / "out",
                        chunk_size=CHUNK, progress=False)
    assert not rep.ok
    status = {Path(f.input).name: f for f in rep.files}
    assert status["vocab.bin"].status == "done"
    assert sha256(status["vocab.bin"].output) == reference["vocab.bin.nnc"]
    for name in ("dangling.bin", "broken.safetensors", "missing.safetensors"):
        assert status[name].status == "failed" and status[name].error
        assert name in rep.summary()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vocab.bin.nnc"]


def test_cli_scheduler(cluster, models, reference, tmp_path, capsys):
    from codec.cli import main

    lc, _ = cluster
    out = tmp_path / "nnc"
    assert main(["compress", "--scheduler", lc.scheduler_address, str(models / "*" / "*.safetensors"),
                 str(models / "vocab.bin"), "-o", str(out), "--chunk-size", str(CHUNK), "-q"]) == 0
    assert {p.name: sha256(p) for p in out.iterdir()} == {Path(k).name: v for k, v in reference.items()}
    assert main(["decompress", "--scheduler", lc.scheduler_address, str(out), "-o", str(tmp_path / "back"),
                 "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert sha256(tmp_path / "back" / "vocab.bin") == sha256(models / "vocab.bin")
    assert main(["compress", "--scheduler", lc.scheduler_address, str(tmp_path / "nope.bin"),
                 "-o", str(out), "-q"]) == 1


def test_local_process_pool_and_fsspec_urls(models, reference, tmp_path):
    rep = compress_many(["local://" + str(models)], None, workers=2, output_dir=tmp_path / "nnc",
                        chunk_size=CHUNK, task_bytes=TASK, progress=False)
    assert rep.ok, rep.summary()
    assert _outputs(tmp_path / "nnc") == reference
    back = decompress_many([str(tmp_path / "nnc" / "**" / "*.nnc")], None, workers=2,
                           output_dir=tmp_path / "back", progress=False)
    assert back.ok, back.summary()
    for p in models.rglob("*"):
        if p.is_file():
            assert sha256(tmp_path / "back" / p.name) == sha256(p)
