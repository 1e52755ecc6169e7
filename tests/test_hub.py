"""codec push / pull end to end: the real `huggingface_hub` client against tests/hub_server.py on
127.0.0.1 (no mocks of the client, no other network). The model is MiniLM: two shards of real
tensors rounded to BF16, with the real config.json, tokenizer.json and model card."""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codec import datasets
from codec.checksum import sha256_file
from codec.errors import BackendUnavailableError, CodecError, FileExistsCodecError, FormatError

try:  # tests/ as a package or as a rootdir on sys.path
    from .hub_server import HubServer
except ImportError:
    from hub_server import HubServer

TOKEN = "hf_test_write_token"


def sha256(path) -> str:
    return sha256_file(path)

_names = itertools.count()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """huggingface_hub set up for the local server: no Xet, not offline, HF_HOME in a temp folder,
    no saved token or HF_TOKEN/HF_ENDPOINT from the developer's environment. The env vars are set
    for a client imported later, the constants patched for one imported earlier (they are read at
    import)."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("hf_home")
    for name, value in (("HF_HUB_DISABLE_XET", "1"), ("HF_HOME", str(home)),
                        ("HF_HUB_DISABLE_TELEMETRY", "1")):
        mp.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        mp.delenv(name, raising=False)
    hf = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants as C

    old_home = C.HF_HOME
    for name, value in list(vars(C).items()):
        if isinstance(value, str) and value.startswith(old_home) and name.isupper():
            mp.setattr(C, name, str(home) + value[len(old_home):])
    mp.setattr(C, "HF_HUB_DISABLE_XET", True)
    mp.setattr(C, "HF_HUB_OFFLINE", False)
    yield hf
    mp.undo()


@pytest.fixture(scope="module")
def server(hf):
    with HubServer(token=TOKEN) as s:
        yield s


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A sharded MiniLM folder: BF16 shards + index, real config/tokenizer/card, a subfolder."""
    d = tmp_path_factory.mktemp("minilm") / "minilm"
    d.mkdir()
    real = datasets.minilm_dir()
    tensors = datasets.minilm_tensors("BF16")
    shards = {"model-00001-of-00002.safetensors": lambda k: k.startswith(("embeddings.position",
                                                                            "encoder.layer.0.")),
              "model-00002-of-00002.safetensors": lambda k: k.startswith("encoder.layer.1.")}
    weight_map = {}
    for name, pick in shards.items():
        sel = {k: v for k, v in tensors.items() if pick(k)}
        datasets.write_safetensors(d / name, sel, metadata={"format": "pt"})
        weight_map.update({k: name for k in sel})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                               indent=2, sort_keys=True))
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        shutil.copy(real / n, d / n)
    (d / "1_Pooling").mkdir()
    shutil.copy(real / "1_Pooling" / "config.json", d / "1_Pooling" / "config.json")
    return d


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _repo() -> str:
    return f"tester/minilm-{next(_names)}"


@pytest.fixture(scope="module")
def pushed(server, model_dir):
    from codec import hub

    repo = _repo()
    before = dict(server.stats)
    r = hub.push(model_dir, repo, endpoint=server.url, token=TOKEN, progress=False)
    return repo, r, {k: server.stats[k] - before.get(k, 0) for k in server.stats}


# --------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------
def test_push_uploads_compressed_weights_and_small_files(server, model_dir, pushed):
    repo, r, delta = pushed
    stored = server.files(repo)
    local = _files(model_dir)
    shards = [p for p in local if p.endswith(".safetensors")]
    assert len(shards) == 2
    for p in shards:
        assert p not in stored and p + ".nnc" in stored
    for p in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
              "1_Pooling/config.json"):
        assert hashlib.sha256(stored[p]).hexdigest() == local[p], p
    assert r.changed and delta["commits"] == 1 and r.commit_oid == server.head(repo)
    # the weights went through the LFS path, compressed; the upload is what we measure
    nnc_bytes = sum(len(stored[p + ".nnc"]) for p in shards)
    orig_bytes = sum((model_dir / p).stat().st_size for p in shards)
    assert delta["lfs_bytes"] == nnc_bytes == r.compressed_bytes
    assert r.original_bytes == orig_bytes and r.ratio < 0.75
    print(f"\nupload of the weights: {orig_bytes} -> {nnc_bytes} bytes "
          f"({orig_bytes - nnc_bytes} saved, ratio {100 * r.ratio:.1f} %)")


def test_model_card_section_keeps_existing_card(server, model_dir, pushed):
    from codec.hub import SECTION_BEGIN, SECTION_END

    repo, r, _ = pushed
    card = server.files(repo)["README.md"].decode()
    original = (model_dir / "README.md").read_text()
    assert card.count(SECTION_BEGIN) == 1 and card.count(SECTION_END) == 1
    assert card.startswith(original[:original.index("\n---", 3) + 4])       # YAML front matter first
    assert original.split("---", 2)[2].strip() in card                    # the rest kept verbatim
    section = card[card.index(SECTION_BEGIN):card.index(SECTION_END)]
    assert f"codec pull {repo}" in section and "--decompress" in section and "losslessly compressed" in section
    assert f"{100 * r.ratio:.1f} %" in section


def test_repush_unchanged_uploads_nothing(server, model_dir, pushed):
    from codec import hub

    repo, first, _ = pushed
    before = dict(server.stats)
    r = hub.push(model_dir, repo, endpoint=server.url, token=TOKEN, progress=False)
    assert not r.changed and r.commit_oid == first.commit_oid == server.head(repo)
    for k in ("commits", "lfs_bytes", "lfs_uploads", "regular_bytes"):
        assert server.stats[k] == before.get(k, 0), k


def test_push_changed_shard_uploads_only_that_shard(server, model_dir, tmp_path):
    from codec import hub

    repo = _repo()
    hub.push(model_dir, repo, endpoint=server.url, token=TOKEN, progress=False)
    changed = tmp_path / "m"
    shutil.copytree(model_dir, changed)
    tensors, meta = datasets.read_safetensors(changed / "model-00002-of-00002.safetensors")
    name = sorted(tensors)[0]
    dtype, shape, data = tensors[name]
    data = data.copy()
    data[:2] ^= 1
    tensors[name] = (dtype, shape, data)
    datasets.write_safetensors(changed / "model-00002-of-00002.safetensors", tensors, meta)
    before = dict(server.stats)
    r = hub.push(changed, repo, endpoint=server.url, token=TOKEN, progress=False)
    assert r.changed
    assert server.stats["lfs_uploads"] - before.get("lfs_uploads", 0) == 1     # only shard 2
    assert server.stats["lfs_bytes"] - before.get("lfs_bytes", 0) == len(
        server.files(repo)["model-00002-of-00002.safetensors.nnc"])


def test_push_precompressed_folder_is_deterministic(server, model_dir, pushed, tmp_path):
    """A folder of .nnc files made by `codec compress` pushes the same bytes: the LFS objects are
    already on the server, so nothing is uploaded again."""
    import codec
    from codec import hub

    repo, _, _ = pushed
    d = tmp_path / "pre"
    shutil.copytree(model_dir, d)
    for p in sorted(d.glob("*.safetensors")):
        codec.compress_file(p, workers=1)
        p.unlink()
    before = dict(server.stats)
    r = hub.push(d, _repo(), endpoint=server.url, token=TOKEN, progress=False)
    assert r.changed and server.stats["lfs_uploads"] == before.get("lfs_uploads", 0)
    assert {f.path_in_repo: f.original_sha256 for f in r.files if f.compressed} == {
        f.path_in_repo: f.original_sha256 for f in pushed[1].files if f.compressed}
    stored = server.files(r.repo_id)
    assert all(stored[f.path_in_repo] == server.files(repo)[f.path_in_repo] for f in r.files if f.compressed)


def test_push_keeps_remote_card_and_revision_branch(server, model_dir, pushed, tmp_path):
    from huggingface_hub import HfApi

    from codec import hub

    repo, _, _ = pushed
    api = HfApi(endpoint=server.url, token=TOKEN)
    card = server.files(repo)["README.md"].decode() + "\nA line the owner added on the Hub.\n"
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo)
    d = tmp_path / "nocard"
    shutil.copytree(model_dir, d)
    (d / "README.md").unlink()
    main_head = server.head(repo)
    r = hub.push(d, repo, revision="dev", endpoint=server.url, token=TOKEN, progress=False)
    assert server.head(repo) == main_head                       # main untouched
    assert r.commit_oid == server.head(repo, "dev")
    assert server.files(repo, "dev")["README.md"].decode() == card   # nothing else to change in the card
    assert not r.changed                                        # dev started from main: same files


# --------------------------------------------------------------------------------------
# Pull
# --------------------------------------------------------------------------------------
def test_pull_decompress_restores_originals(server, model_dir, pushed, tmp_path):
    from codec import hub

    repo, _, _ = pushed
    out = tmp_path / "restored"
    r = hub.pull(repo, output=out, decompress=True, endpoint=server.url, token=TOKEN, progress=False)
    got, want = _files(out), _files(model_dir)
    for p, digest in want.items():
        if p != "README.md":
            assert got[p] == digest, p
    assert not [p for p in got if p.endswith(".nnc")]           # decompress=True does not keep them
    assert sorted(r.restored) == sorted(p for p in want if p.endswith(".safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == ["restored"]  # no staging folder left behind
    tensors, _ = datasets.read_safetensors(out / "model-00001-of-00002.safetensors")
    assert "encoder.layer.0.attention.self.query.weight" in tensors


def test_pull_compressed_verifies_and_reads(server, model_dir, pushed, tmp_path, monkeypatch):
    import codec
    from codec import hub

    repo, _, _ = pushed
    monkeypatch.setenv("HF_ENDPOINT", server.url)                # the env convention, no endpoint=
    out = tmp_path / "compressed"
    r = hub.pull(repo, output=out, token=TOKEN, progress=False)
    assert sorted(r.verified) == ["model-00001-of-00002.safetensors.nnc", "model-00002-of-00002.safetensors.nnc"]
    assert not list(out.glob("*.safetensors"))
    tensors, _ = datasets.read_safetensors(model_dir / "model-00002-of-00002.safetensors")
    name = sorted(tensors)[0]
    with codec.open(out / "model-00002-of-00002.safetensors.nnc") as f:
        assert f.get_tensor(name).tobytes() == tensors[name][2].tobytes()


def test_pull_into_existing_folder(server, pushed, tmp_path):
    from codec import hub

    repo, _, _ = pushed
    out = tmp_path / "existing"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsCodecError):
        hub.pull(repo, output=out, endpoint=server.url, token=TOKEN, progress=False)
    hub.pull(repo, output=out, endpoint=server.url, token=TOKEN, progress=False, overwrite=True,
             decompress=True, keep_compressed=True)
    assert (out / "mine.txt").read_text() == "user data"
    assert (out / "model-00001-of-00002.safetensors").is_file()
    assert (out / "model-00001-of-00002.safetensors.nnc").is_file()


# --------------------------------------------------------------------------------------
# Bad input: clear codec errors, never a half-written output folder
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("decompress", [False, True])
def test_corrupted_download_is_caught(server, pushed, tmp_path, decompress):
    from codec import hub

    repo, r, _ = pushed
    path = "model-00002-of-00002.safetensors.nnc"
    size = next(f.size for f in r.files if f.path_in_repo == path)
    server.corrupt[(repo, path)] = size // 2                     # same size, one bit flipped
    try:
        out = tmp_path / "bad"
        with pytest.raises(FormatError) as e:
            hub.pull(repo, output=out, decompress=decompress, endpoint=server.url, token=TOKEN, progress=False)
        assert path in str(e.value)
        assert not out.exists() and not list(tmp_path.iterdir())
    finally:
        del server.corrupt[(repo, path)]


def test_missing_file_and_not_codec_repo(server, pushed, tmp_path):
    from huggingface_hub import HfApi

    from codec import hub
    from codec.hub import HubError

    repo, _, _ = pushed
    server.hidden.add((repo, "config.json"))
    try:
        with pytest.raises(HubError):
            hub.pull(repo, output=tmp_path / "x", endpoint=server.url, token=TOKEN, progress=False)
    finally:
        server.hidden.discard((repo, "config.json"))
    assert not list(tmp_path.iterdir())

    plain = "tester/plain-model"
    api = HfApi(endpoint=server.url, token=TOKEN)
    api.create_repo(plain)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=plain)
    before = server.stats["download_bytes"]
    with pytest.raises(HubError, match="not codec-compressed"):
        hub.pull(plain, output=tmp_path / "y", endpoint=server.url, token=TOKEN, progress=False)
    assert server.stats["download_bytes"] == before and not list(tmp_path.iterdir())
    with pytest.raises(HubError, match="not found"):
        hub.pull("tester/does-not-exist", output=tmp_path / "z", endpoint=server.url, progress=False)


def test_tokens_and_private_repos(server, model_dir, tmp_path, monkeypatch):
    from codec import hub
    from codec.hub import HubError

    repo = _repo()
    with pytest.raises(HubError, match="refused the token"):
        hub.push(model_dir, repo, endpoint=server.url, token="hf_wrong", progress=False)
    with pytest.raises(HubError, match="no token"):
        hub.push(model_dir, repo, endpoint=server.url, progress=False)          # no token at all
    r = hub.push(model_dir, repo, private=True, endpoint=server.url, token=TOKEN, progress=False)
    assert server.store.repos[repo].private and r.changed
    with pytest.raises(HubError, match="refused the token"):                    # the repo exists now
        hub.push(model_dir, repo, endpoint=server.url, token="hf_wrong", progress=False)
    with pytest.raises(HubError, match="private"):
        hub.pull(repo, output=tmp_path / "anon", endpoint=server.url, progress=False)
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("HF_TOKEN", TOKEN)                                          # the env convention
    hub.pull(repo, output=tmp_path / "ok", endpoint=server.url, progress=False)
    assert (tmp_path / "ok" / "config.json").is_file()


def test_unreachable_endpoint(hf, model_dir, tmp_path):
    import socket

    from codec import hub
    from codec.hub import HubError

    with socket.socket() as s:                                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.perf_counter()
    with pytest.raises(HubError, match="cannot reach"):
        hub.pull("tester/x", output=tmp_path / "o", endpoint=url, progress=False)
    with pytest.raises(HubError, match="cannot reach"):
        hub.push(model_dir, "tester/x", endpoint=url, token=TOKEN, progress=False)
    assert time.perf_counter() - t0 < 20 and not list(tmp_path.iterdir())


def test_push_folder_without_weights(hf, tmp_path):
    from codec import hub

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CodecError, match="no .safetensors or .nnc"):
        hub.push(tmp_path, "tester/empty", endpoint="http://127.0.0.1:9", token=TOKEN)


# --------------------------------------------------------------------------------------
# CLI, optional dependency, model card helper
# --------------------------------------------------------------------------------------
def test_cli_push_pull(server, model_dir, tmp_path, capsys):
    from codec.cli import main

    repo = _repo()
    assert main(["push", str(model_dir), repo, "--endpoint", server.url, "--token", TOKEN, "-q"]) == 0
    assert main(["push", str(model_dir), repo, "--endpoint", server.url, "--token", TOKEN, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] is False and out["ratio"] < 0.75
    dest = tmp_path / "cli"
    assert main(["pull", repo, "-o", str(dest), "--decompress", "--endpoint", server.url, "--token", TOKEN]) == 0
    assert "restored 2 file(s)" in capsys.readouterr().out
    assert sha256(dest / "model-00001-of-00002.safetensors") == sha256(model_dir / "model-00001-of-00002.safetensors")
    assert main(["pull", repo, "-o", str(dest), "--endpoint", server.url, "--token", TOKEN]) == 1   # exists
    assert main(["pull", "tester/nope", "-o", str(tmp_path / "n"), "--endpoint", server.url]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["pull", repo, "--keep-nnc"]) == 2


def test_missing_huggingface_hub(monkeypatch, model_dir, tmp_path, capsys):
    from codec import hub
    from codec.cli import main

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)   # import fails as if not installed
    with pytest.raises(BackendUnavailableError, match="codec\\[hub\\]"):
        hub.push(model_dir, "tester/x")
    with pytest.raises(ImportError):
        hub.pull("tester/x", output=tmp_path / "o")
    assert main(["pull", "tester/x", "-o", str(tmp_path / "o")]) == 3
    assert not list(tmp_path.iterdir())


def test_import_codec_does_not_import_huggingface_hub():
    code = "import sys, codec, codec.cli, codec.hub; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_update_card():
    from codec.hub import SECTION_BEGIN, SECTION_END, update_card

    s1 = f"{SECTION_BEGIN}\nratio 50 %\n{SECTION_END}\n"
    s2 = f"{SECTION_BEGIN}\nratio 40 %\n{SECTION_END}\n"
    new = update_card(None, s1)
    assert new.startswith("---\n") and s1 in new
    assert update_card(new, s1) == new and update_card(update_card(new, s2), s1) == new
    card = "---\nlicense: mit\n---\n# Title\n\ntext\n"
    out = update_card(card, s1)
    assert out == "---\nlicense: mit\n---\n\n" + s1 + "\n# Title\n\ntext\n"
    assert update_card(out, s2) == out.replace(s1, s2)
    assert update_card("# Title\n", s1) == s1 + "\n# Title\n"


def test_full_minilm_fp32(server, tmp_path):
    """The whole real MiniLM folder (FP32, 91 MB) as it ships: push, pull --decompress, same sha256."""
    from codec import hub

    src = datasets.minilm_dir()
    repo = _repo()
    before = server.stats["lfs_bytes"]
    r = hub.push(src, repo, endpoint=server.url, token=TOKEN, progress=False)
    print(f"\nfull MiniLM: {r.original_bytes} -> {r.compressed_bytes} bytes uploaded as LFS "
          f"({server.stats['lfs_bytes'] - before}), ratio {100 * r.ratio:.2f} %")
    out = tmp_path / "full"
    hub.pull(repo, output=out, decompress=True, endpoint=server.url, token=TOKEN, progress=False)
    assert sha256(out / "model.safetensors") == sha256(src / "model.safetensors")
    for p in ("config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert sha256(out / p) == sha256(src / p), p


def test_load_model_from_repo_id(server, tmp_path, monkeypatch):
    """codec.load_model(REPO_ID) pulls the compressed repo and runs it, bit-identical."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import codec
    from codec import hub

    folder = tmp_path / "minilm-bf16"
    folder.mkdir()
    datasets.write_safetensors(folder / "model.safetensors", datasets.minilm_tensors("BF16"))
    shutil.copy(datasets.minilm_dir() / "config.json", folder / "config.json")
    repo = _repo()
    hub.push(folder, repo, endpoint=server.url, token=TOKEN, progress=False)
    monkeypatch.setenv("CODEC_CACHE", str(tmp_path / "cache"))
    model = codec.load_model(repo, endpoint=server.url, token=TOKEN)
    ref = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.data = p.data.clone()  # torch-aligned, like codec's decoded weights
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.inference_mode():
        a, b = ref(ids).last_hidden_state, model(ids).last_hidden_state
    assert a.dtype == b.dtype == torch.bfloat16
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
