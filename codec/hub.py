"""Push compressed models to the Hugging Face Hub and pull them back, with the real `huggingface_hub`.

    >>> from codec import hub
    >>> hub.push("my-model/", "me/my-model-nnc")                       # compress + upload
    >>> hub.pull("me/my-model-nnc", output="my-model", decompress=True)  # download + verify + restore

`push` compresses every `*.safetensors` file of a model folder to `*.safetensors.nnc` (in a temporary
folder; the input folder is never written), takes `.nnc` files that are already there as they are,
uploads them with every other file (config.json, tokenizer, ...) unchanged, and writes a section of
the model card (README.md) between `<!-- codec:begin -->` and `<!-- codec:end -->`: the card's other
content (the folder's README.md, else the one already on the Hub) is kept. Compression is
deterministic, so pushing unchanged files again uploads nothing and creates no commit
(`huggingface_hub` drops unchanged files and skips empty commits).

`pull` lists the repo first (a repo without `.nnc` files is refused before anything is downloaded),
downloads the snapshot with `snapshot_download` into a temporary folder beside `output`, verifies
every `.nnc` file (every chunk checksum and the original's XXH3, or sha256 in older files), and with `decompress=True`
restores the original `*.safetensors` files. Only then are the files moved into `output`, so a
failed pull leaves no half-written folder. With `decompress=True` the `.nnc` files are not placed in
`output` (the folder then looks like the original model folder; `keep_compressed=True` keeps them).
An existing non-empty `output` is refused unless `overwrite=True`, which replaces the files of the
same name and removes nothing else.

The endpoint and token follow `huggingface_hub`: `endpoint=`/`token=` when given, else
`HF_ENDPOINT`/`HF_TOKEN` (or the token saved by `hf auth login`). Transfer errors are raised as
`HubError` (a `codec.CodecError`) naming the repo, the endpoint and what went wrong, with the
client's exception chained.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .api import human_size
from .checksum import sha256_file
from .errors import BackendUnavailableError, CodecError, FileExistsCodecError

log = logging.getLogger("codec.hub")

NNC_SUFFIX = ".nnc"
SECTION_BEGIN = "<!-- codec:begin -->"
SECTION_END = "<!-- codec:end -->"
CARD = "README.md"


class HubError(CodecError):
    """A Hub transfer failed (repo or revision not found, bad token, unreachable endpoint, missing file)."""


def _hf():
    try:
        import huggingface_hub
    except ImportError as exc:
        raise BackendUnavailableError("push/pull need huggingface_hub: pip install 'codec[hub]'") from exc
    return huggingface_hub


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclass
class HubFile:
    path_in_repo: str
    size: int                       # bytes in the repo
    original_size: int | None = None  # for .nnc files: the size of the file they restore
    original_sha256: str | None = None

    @property
    def compressed(self) -> bool:
        return self.original_size is not None


@dataclass
class PushResult:
    repo_id: str
    revision: str | None
    commit_oid: str
    commit_url: str
    changed: bool                   # False: nothing differed from the Hub, no commit was made
    files: list[HubFile] = field(default_factory=list)

    @property
    def original_bytes(self) -> int:
        return sum(f.original_size for f in self.files if f.compressed)

    @property
    def compressed_bytes(self) -> int:
        return sum(f.size for f in self.files if f.compressed)

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes if self.original_bytes else 1.0


@dataclass
class PullResult:
    repo_id: str
    revision: str | None
    commit_oid: str
    output: str
    verified: list[str] = field(default_factory=list)   # .nnc paths whose checksums were checked
    restored: list[str] = field(default_factory=list)   # original files written (decompress=True)
    files: list[str] = field(default_factory=list)      # every file placed in `output`


# --------------------------------------------------------------------------------------
# Errors from the client -> HubError with context
# --------------------------------------------------------------------------------------
def _transport_errors() -> tuple:
    out = []
    for mod, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                      ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout")):
        try:
            out.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def _endpoint_of(api) -> str:
    return getattr(api, "endpoint", None) or "the Hub"


@contextlib.contextmanager
def _hub_errors(action: str, repo_id: str, endpoint: str, token):
    _hf()
    from huggingface_hub import errors as E

    try:
        yield
    except CodecError:
        raise
    except E.RepositoryNotFoundError as exc:
        who = "no token was given" if not token and not _saved_token() else "the token may lack access"
        raise HubError(f"{action}: repository {repo_id!r} not found on {endpoint} (if it is private or "
                       f"gated, {who}): {_first_line(exc)}") from exc
    except E.RevisionNotFoundError as exc:
        raise HubError(f"{action}: revision not found in {repo_id!r} on {endpoint}: {_first_line(exc)}") from exc
    except E.EntryNotFoundError as exc:
        raise HubError(f"{action}: a file of {repo_id!r} is missing or could not be fetched from {endpoint}: "
                       f"{_first_line(exc)}") from exc
    except E.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"{action}: {endpoint} refused the token for {repo_id!r} (HTTP {status}: invalid "
                           f"token or no write access; pass token= / --token or set HF_TOKEN)") from exc
        raise HubError(f"{action} {repo_id!r} on {endpoint}: {_first_line(exc)}") from exc
    except E.LocalTokenNotFoundError as exc:
        raise HubError(f"{action}: no token for {endpoint}: pass token= / --token, set HF_TOKEN or run "
                       f"`hf auth login`") from exc
    except E.HFValidationError as exc:
        raise HubError(f"{action}: {exc}") from exc
    except _transport_errors() as exc:
        raise HubError(f"{action}: cannot reach {endpoint}: {type(exc).__name__}: {exc}") from exc


def _uri_error() -> tuple:
    from huggingface_hub import errors as E

    return (E.HfUriError,) if hasattr(E, "HfUriError") else ()


class _DropEmptyCommitWarning(logging.Filter):
    """push reports "nothing changed" itself; the client's warning about the skipped commit is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping to prevent empty commit" not in record.getMessage()


@contextlib.contextmanager
def _quiet_empty_commit():
    logger, flt = logging.getLogger("huggingface_hub.hf_api"), _DropEmptyCommitWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def _saved_token():
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001
        return None


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """huggingface_hub shows tqdm bars on transfers; switch them off (and back) when not wanted."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _api(endpoint, token):
    hf = _hf()
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    return hf.HfApi(endpoint=endpoint, token=token)


# --------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------
def _scan(folder: Path) -> list[str]:
    """Files of a model folder as repo paths, sorted; hidden files and folders are skipped."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = Path(root).relative_to(folder)
        for name in sorted(files):
            if name.startswith("."):
                continue
            out.append((rel_root / name).as_posix())
    return sorted(out)


def _nnc_manifest(path: Path) -> dict:
    from .formats.nncfile import NncFile

    with NncFile(path) as nf:
        return nf.manifest


def card_section(repo_id: str, files: list[HubFile]) -> str:
    """The model card section (between the markers): what the files are, the ratio, how to restore."""
    from . import __version__

    comp = [f for f in files if f.compressed]
    orig = sum(f.original_size for f in comp)
    size = sum(f.size for f in comp)
    rows = "\n".join(f"| `{f.path_in_repo}` | {human_size(f.original_size)} | {human_size(f.size)} | "
                     f"{100 * f.size / max(f.original_size, 1):.1f} % |" for f in comp)
    name = repo_id.split("/")[-1]
    return f"""{SECTION_BEGIN}
## Compressed with `codec`

The weights in this repository are **losslessly compressed** with `codec` {__version__}: each
`*.nnc` file restores the original safetensors file bit for bit (it records the original's sha256,
and every chunk carries a checksum). Total: {human_size(orig)} -> {human_size(size)}
({100 * size / max(orig, 1):.1f} % of the original, {orig / max(size, 1):.2f}x smaller).

| file | original | compressed | ratio |
|---|---:|---:|---:|
{rows}

Restore the original safetensors files (every checksum verified) so that any tool can load them:

```bash
pip install "codec[hub]"
codec pull {repo_id} -o {name} --decompress
```

In Python: `codec.hub.pull("{repo_id}", output="{name}", decompress=True)`; a single tensor can
be read from a pulled `.nnc` file with `codec.open(path).get_tensor(name)`.
{SECTION_END}
"""


def update_card(text: str | None, section: str) -> str:
    """Put `section` into a model card: replace our marked section, else insert it after the YAML
    front matter (or at the top). Everything else in the card is kept as it is."""
    if not text:
        return "---\ntags:\n- codec-compressed\n---\n\n" + section
    begin, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if begin >= 0 and end > begin:
        stop = end + len(SECTION_END)
        if text[stop:stop + 1] == "\n":
            stop += 1
        return text[:begin] + section + text[stop:]
    head, body = "", text
    if text.startswith("---\n") or text.startswith("---\r\n"):
        close = text.find("\n---", 3)
        if close >= 0:
            stop = text.find("\n", close + 4)
            stop = len(text) if stop < 0 else stop + 1
            head, body = text[:stop], text[stop:]
    return head + ("\n" if head else "") + section + ("\n" + body.lstrip("\n") if body.strip() else "")


def push(folder, repo_id: str, *, revision: str | None = None, private: bool = False,
         endpoint: str | None = None, token: str | None = None, codec="auto", level: int | None = None,
         workers: int | None = None, commit_message: str | None = None, progress: bool = True) -> PushResult:
    """Compress the safetensors files of `folder` and upload the model to `repo_id` (created if needed).

    `revision` is the branch to commit to (created from the default branch if missing). Unchanged
    files are not uploaded again; when nothing changed no commit is made (`result.changed` is False).
    """
    _hf()
    from huggingface_hub import CommitOperationAdd

    from .api import compress_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CodecError(f"{folder} is not a folder")
    paths = _scan(folder)
    weights = [p for p in paths if p.endswith(".safetensors")]
    given_nnc = [p for p in paths if p.endswith(NNC_SUFFIX) and p[:-len(NNC_SUFFIX)] not in weights]
    if not weights and not given_nnc:
        raise CodecError(f"{folder} has no .safetensors or .nnc files to push")
    plain = [p for p in paths if p not in weights and not p.endswith(NNC_SUFFIX) and p != CARD]

    api = _api(endpoint, token)
    where = _endpoint_of(api)
    with _hub_errors("push", repo_id, where, token), _progress_bars(progress):
        # Check the token and create the repo and branch first: a bad token or endpoint fails
        # before any compression.
        api.whoami()
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        except _uri_error() as exc:
            # huggingface_hub 2.x: on the exist_ok path for a token that may not create repos (401/403
            # and the repo exists) it builds the repo URL without the endpoint and rejects a custom
            # endpoint's host. The repo exists; a token without write access fails at upload.
            log.debug("create_repo: %s (the repo exists)", exc)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.repo_info(repo_id, revision=revision, repo_type="model")
        if private and not getattr(info, "private", True):
            log.warning("%s exists and is public; private=True does not change an existing repo", repo_id)
        head = info.sha

        with tempfile.TemporaryDirectory(prefix="codec-push-") as tmp:
            tmp = Path(tmp)
            files: list[HubFile] = []
            ops = []
            for rel in weights:
                src = folder / rel
                target = rel + NNC_SUFFIX
                have = folder / target
                out = tmp / target
                reuse = False
                if have.is_file() and codec == "auto" and level is None:
                    try:
                        man = _nnc_manifest(have)
                        reuse = (man["original_size"] == src.stat().st_size
                                 and man["original_sha256"] == sha256_file(src))
                    except CodecError:
                        reuse = False
                if reuse:
                    out = have
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    compress_file(src, out, codec=codec, level=level, workers=workers, overwrite=True,
                                  progress=progress)
                man = _nnc_manifest(out)
                files.append(HubFile(target, out.stat().st_size, man["original_size"], man["original_sha256"]))
                ops.append((target, out))
            for rel in given_nnc:
                src = folder / rel
                man = _nnc_manifest(src)  # validates signature, footer and manifest checksum
                files.append(HubFile(rel, src.stat().st_size, man["original_size"], man["original_sha256"]))
                ops.append((rel, src))
            for rel in plain:
                ops.append((rel, folder / rel))
                files.append(HubFile(rel, (folder / rel).stat().st_size))

            # The model card: the folder's README.md, else the one on the Hub, with our section.
            card_src = folder / CARD
            if card_src.is_file():
                old = card_src.read_text(encoding="utf-8")
            else:
                old = _remote_card(api, repo_id, head, tmp)
            card = tmp / ".card" / CARD
            card.parent.mkdir()
            card.write_bytes(update_card(old, card_section(repo_id, files)).encode("utf-8"))
            ops.append((CARD, card))
            files.append(HubFile(CARD, card.stat().st_size))

            ops.sort()
            files.sort(key=lambda f: f.path_in_repo)
            comp = [f for f in files if f.compressed]
            orig_b = sum(f.original_size for f in comp)
            comp_b = sum(f.size for f in comp)
            message = commit_message or (f"Upload codec-compressed weights ({human_size(orig_b)} -> "
                                         f"{human_size(comp_b)})")
            with _quiet_empty_commit():
                commit = api.create_commit(
                    repo_id, [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(src)) for p, src in ops],
                    commit_message=message, revision=revision, parent_commit=head, repo_type="model")
    changed = commit.oid != head
    return PushResult(repo_id, revision, commit.oid, commit.commit_url, changed, files)


def _remote_card(api, repo_id: str, revision: str, tmp: Path) -> str | None:
    from huggingface_hub import errors as E

    try:
        path = api.hf_hub_download(repo_id, CARD, revision=revision, local_dir=tmp / ".remote-card")
    except E.EntryNotFoundError:
        return None
    return Path(path).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------
# Pull
# --------------------------------------------------------------------------------------
def pull(repo_id: str, *, output=None, revision: str | None = None, decompress: bool = False,
         endpoint: str | None = None, token: str | None = None, workers: int | None = None,
         keep_compressed: bool = False, overwrite: bool = False, progress: bool = True) -> PullResult:
    """Download a `codec`-compressed repo into `output` (default: the repo name, in the current folder),
    verify every `.nnc` file, and with `decompress=True` restore the original safetensors files."""
    hf = _hf()
    from .api import decompress_file, verify

    output = Path(output) if output is not None else Path(repo_id.split("/")[-1])
    if output.exists():
        if not output.is_dir():
            raise FileExistsCodecError(f"{output} exists and is not a folder")
        if any(output.iterdir()) and not overwrite:
            raise FileExistsCodecError(f"{output} exists and is not empty (use --force / overwrite=True to "
                                       f"replace the files it shares with the repo)")
    api = _api(endpoint, token)
    where = _endpoint_of(api)
    with _hub_errors("pull", repo_id, where, token), _progress_bars(progress):
        info = api.repo_info(repo_id, revision=revision, repo_type="model")
        names = sorted(s.rfilename for s in (info.siblings or []))
        nnc = [n for n in names if n.endswith(NNC_SUFFIX)]
        if not nnc:
            raise HubError(f"pull: {repo_id!r} on {where} has no .nnc files: it is not codec-compressed "
                           f"(download it with huggingface_hub.snapshot_download)")
        commit = info.sha
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.codec-pull-", dir=output.parent))
        try:
            snap = staging / "snapshot"
            hf.snapshot_download(repo_id, revision=commit, local_dir=snap, endpoint=api.endpoint,
                                 token=token, repo_type="model")
            shutil.rmtree(snap / ".cache", ignore_errors=True)  # the client's bookkeeping for local_dir
            result = PullResult(repo_id, revision, commit, str(output))
            for rel in nnc:
                path = snap / rel
                if not path.is_file():
                    raise HubError(f"pull: {rel} is listed in {repo_id!r} but was not downloaded")
                if decompress:
                    # decompress_file checks every chunk and the whole original before the rename
                    decompress_file(path, path.with_name(path.name[:-len(NNC_SUFFIX)]), workers=workers,
                                    progress=progress)
                    result.restored.append(rel[:-len(NNC_SUFFIX)])
                    if not keep_compressed:
                        path.unlink()
                else:
                    verify(path, workers=workers, progress=progress)
                result.verified.append(rel)
            result.files = _scan_all(snap)
            _move_into(snap, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _scan_all(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _move_into(src: Path, dst: Path) -> None:
    """Move the verified files into place: one rename when `dst` does not exist, else file by file."""
    if not dst.exists():
        os.replace(src, dst)
        return
    for rel in _scan_all(src):
        target = dst / PurePosixPath(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise FileExistsCodecError(f"{target} is a folder; the repo has a file of that name")
        os.replace(src / rel, target)
