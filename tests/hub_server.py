"""A small in-memory server speaking the part of the Hugging Face Hub HTTP protocol that the real
`huggingface_hub` client (tested with 2.4) uses for create_repo, create_branch, repo_info/model_info,
preupload + LFS batch/upload/verify + commit, list_repo_tree, hf_hub_download and snapshot_download.

Test use only (stdlib `http.server`, one thread per connection, 127.0.0.1):

    with HubServer(token="hf_test") as hub:
        HfApi(endpoint=hub.url, token="hf_test").create_repo("me/model")

Auth: write calls need `Authorization: Bearer <token>` (401 otherwise, with the Hub's message);
private repos answer 401 RepoNotFound without it. Xet is not implemented (clients must set
HF_HUB_DISABLE_XET=1). No pull requests, no pagination.

For tests, `hub.stats` counts requests, commits and the bytes received by regular and LFS uploads;
`hub.corrupt[(repo_id, path)] = offset` flips one bit of a served file; `hub.hidden` holds
`(repo_id, path)` pairs listed in the tree but answered 404 on download.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = (b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                 b"*.nnc filter=lfs diff=lfs merge=lfs -text\n")
LFS_MIN_SIZE = 1 << 20          # larger files (and any file with a NUL byte in its sample) go to LFS


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra or {}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    sha256: str
    size: int
    lfs: bool
    oid: str       # git blob id (of the LFS pointer for LFS files)


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict = field(default_factory=dict)   # name -> commit id
    commits: dict = field(default_factory=dict)    # commit id -> {"parent", "title", "files"}

    def resolve(self, rev: str | None) -> str:
        rev = unquote(rev or "main")
        rev = rev.removeprefix("refs/heads/")
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.commits:
            return rev
        raise HttpError(404, "RevisionNotFound", f"Invalid rev id: {rev}")


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.blobs: dict[str, bytes] = {}
        self.repos: dict[str, Repo] = {}
        self.serial = 0

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(sha, data)
        return sha

    def commit(self, repo: Repo, parent: str | None, files: dict, title: str) -> str:
        self.serial += 1
        cid = hashlib.sha1(json.dumps([parent, sorted(files), title, self.serial]).encode()).hexdigest()
        repo.commits[cid] = {"parent": parent, "title": title, "files": files}
        return cid

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HttpError(404, "RepoNotFound", f"Repository Not Found: {repo_id}")
        return self.repos[repo_id]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "codec-test-hub/1"

    API = re.compile(r"^/api/models/([^/]+)/([^/]+)(?:/([^/]+)(?:/(.*))?)?$")
    RESOLVE = re.compile(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
    LFS_BATCH = re.compile(r"^/([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$")

    def log_message(self, fmt, *args) -> None:  # quiet
        pass

    # ---- plumbing ----------------------------------------------------------
    @property
    def hub(self) -> "HubServer":
        return self.server.hub

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = []
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(out)
                out.append(self.rfile.read(n))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status: int, body=b"", headers: dict | None = None, ctype="application/json") -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}" if self.hub.token else True

    def need_write(self) -> None:
        if not self.authorized():
            raise HttpError(401, "Unauthorized", "Invalid credentials in Authorization header")

    def readable(self, repo_id: str) -> Repo:
        repo = self.hub.store.repo(repo_id)
        if repo.private and not self.authorized():
            raise HttpError(401, "RepoNotFound", f"Repository Not Found: {repo_id}")
        return repo

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        body = self.body() if self.command in ("POST", "PUT", "DELETE") else b""
        self.hub.stats["requests"] += 1
        try:
            self.route(url.path, parse_qs(url.query), body)
        except HttpError as e:
            self.reply(e.status, {"error": e.message, **e.extra},
                       headers={"X-Error-Code": e.code, "X-Error-Message": e.message})
        except Exception as e:  # noqa: BLE001  (a server bug: answer 500 so the client fails clearly)
            self.reply(500, {"error": f"{type(e).__name__}: {e}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_any

    # ---- routes ------------------------------------------------------------
    def route(self, path: str, query: dict, body: bytes) -> None:
        m = None
        if path == "/api/whoami-v2" and self.command == "GET":
            self.need_write()
            return self.reply(200, {"type": "user", "name": "tester", "orgs": []})
        if path == "/api/repos/create" and self.command == "POST":
            return self.create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and self.command == "POST":
            return self.reply(200, {"errors": [], "warnings": []})
        if path.startswith("/_lfs/"):
            return self.lfs_object(path[len("/_lfs/"):], body)
        if (m := self.LFS_BATCH.match(path)) and self.command == "POST":
            return self.lfs_batch(f"{m[1]}/{m[2]}", json.loads(body or b"{}"))
        if m := self.API.match(path):
            repo_id = f"{unquote(m[1])}/{unquote(m[2])}"
            return self.api(repo_id, m[3] or "", m[4] or "", query, body)
        if (m := self.RESOLVE.match(path)) and self.command in ("GET", "HEAD"):
            return self.download(f"{m[1]}/{m[2]}", m[3], unquote(m[4]))
        raise HttpError(404, "NotFound", f"no route for {self.command} {path}")

    def create_repo(self, payload: dict) -> None:
        self.need_write()
        st = self.hub.store
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        with st.lock:
            if repo_id in st.repos:
                raise HttpError(409, "RepoExists", "You already created this model repo", {"url": url})
            repo = Repo(repo_id, payload.get("private", payload.get("visibility") == "private"))
            sha = st.put(GITATTRIBUTES)
            files = {".gitattributes": StoredFile(sha, len(GITATTRIBUTES), False, git_blob_oid(GITATTRIBUTES))}
            repo.branches["main"] = st.commit(repo, None, files, "initial commit")
            st.repos[repo_id] = repo
        self.reply(200, {"url": url, "name": repo_id})

    def api(self, repo_id: str, action: str, arg: str, query: dict, body: bytes) -> None:
        st, verb = self.hub.store, self.command
        if action in ("", "revision") and verb == "GET":
            return self.reply(200, self.info(repo_id, arg or None, query))
        if action == "tree" and verb == "GET":
            rev, _, sub = arg.partition("/")
            return self.tree(repo_id, rev, unquote(sub).strip("/"), query)
        if action == "preupload" and verb == "POST":
            self.need_write()
            return self.preupload(repo_id, arg, json.loads(body or b"{}"))
        if action == "commit" and verb == "POST":
            self.need_write()
            return self.commit(repo_id, unquote(arg), body, query)
        if action == "branch" and verb == "POST":
            self.need_write()
            with st.lock:
                repo = st.repo(repo_id)
                name = unquote(arg)
                if name in repo.branches:
                    raise HttpError(409, "BranchExists", f"Reference already exists: refs/heads/{name}")
                start = (json.loads(body or b"{}") or {}).get("startingPoint")
                repo.branches[name] = repo.resolve(start)
            return self.reply(200, {})
        if action in ("xet-write-token", "xet-read-token"):
            raise HttpError(501, "NotImplemented", "this test hub has no Xet storage (set HF_HUB_DISABLE_XET=1)")
        raise HttpError(404, "NotFound", f"no route for {verb} /api/models/{repo_id}/{action}")

    def info(self, repo_id: str, rev: str | None, query: dict) -> dict:
        repo = self.readable(repo_id)
        cid = repo.resolve(rev)
        files = repo.commits[cid]["files"]
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p, f in sorted(files.items()):
            s = {"rfilename": p}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        return {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": repo_id.split("/")[0], "sha": cid, "private": repo.private, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z"}

    def tree(self, repo_id: str, rev: str, sub: str, query: dict) -> None:
        repo = self.readable(repo_id)
        files = repo.commits[repo.resolve(rev)]["files"]
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub + "/" if sub else ""
        out, dirs = [], set()
        for p, f in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                "path": d})
            if recursive or len(parts) == 1:
                e = {"type": "file", "oid": f.oid, "size": f.size, "path": p}
                if f.lfs:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                out.append(e)
        self.reply(200, out)

    def download(self, repo_id: str, rev: str, path: str) -> None:
        repo = self.readable(repo_id)
        cid = repo.resolve(rev)
        f = repo.commits[cid]["files"].get(path)
        if f is None or (repo_id, path) in self.hub.hidden:
            raise HttpError(404, "EntryNotFound", f"{path} does not exist on {unquote(rev)}")
        etag = f'"{f.sha256 if f.lfs else f.oid}"'
        headers = {"X-Repo-Commit": cid, "ETag": etag, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(f.size)})
        data = self.hub.store.blobs[f.sha256]
        if (repo_id, path) in self.hub.corrupt:  # a transfer error that keeps the size
            off = self.hub.corrupt[(repo_id, path)] % max(len(data), 1)
            data = data[:off] + bytes([data[off] ^ 0x10]) + data[off + 1:]
        status, rng = 200, self.headers.get("Range")
        if rng and self.command == "GET" and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m[1])
            end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        if self.command == "GET":
            self.hub.stats["download_bytes"] += len(data)
        self.reply(status, data, headers, ctype="application/octet-stream")

    # ---- write side --------------------------------------------------------
    def preupload(self, repo_id: str, rev: str, payload: dict) -> None:
        repo = self.hub.store.repo(repo_id)
        try:
            files = repo.commits[repo.resolve(rev)]["files"]
        except HttpError:
            files = {}
        out = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = item.get("size", 0) >= LFS_MIN_SIZE or b"\0" in sample
            remote = files.get(item["path"])
            oid = None if remote is None else (remote.sha256 if lfs else remote.oid)
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        self.reply(200, {"files": out, "commitOid": None})

    def lfs_batch(self, repo_id: str, payload: dict) -> None:
        self.need_write()
        st = self.hub.store
        st.repo(repo_id)
        objects = []
        for o in payload.get("objects", []):
            item = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if payload.get("operation") == "upload" and o["oid"] not in st.blobs:
                item["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{o['oid']}"},
                                   "verify": {"href": f"{self.hub.url}/_lfs/verify"}}
            objects.append(item)
        self.reply(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def lfs_object(self, oid: str, body: bytes) -> None:
        st = self.hub.store
        if oid == "verify" and self.command == "POST":
            if json.loads(body or b"{}").get("oid") not in st.blobs:
                raise HttpError(404, "EntryNotFound", "LFS object not found")
            return self.reply(200, {})
        if self.command == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                raise HttpError(400, "BadRequest", "sha256 of the uploaded content does not match the oid")
            with st.lock:
                st.put(body)
            self.hub.stats["lfs_uploads"] += 1
            self.hub.stats["lfs_bytes"] += len(body)
            return self.reply(200, b"", ctype="text/plain")
        raise HttpError(404, "NotFound", "unknown LFS route")

    def commit(self, repo_id: str, branch: str, body: bytes, query: dict) -> None:
        if query.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HttpError(400, "BadRequest", "this test hub does not support pull requests")
        st = self.hub.store
        header, ops = {}, []
        for line in body.splitlines():
            if line.strip():
                item = json.loads(line)
                header = item["value"] if item["key"] == "header" else header
                if item["key"] != "header":
                    ops.append(item)
        with st.lock:
            repo = st.repo(repo_id)
            if branch not in repo.branches:
                raise HttpError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            head = repo.branches[branch]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HttpError(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head]["files"])
            for op in ops:
                key, v = op["key"], op["value"]
                if key == "file":
                    data = base64.b64decode(v["content"])
                    self.hub.stats["regular_bytes"] += len(data)
                    files[v["path"]] = StoredFile(st.put(data), len(data), False, git_blob_oid(data))
                elif key == "lfsFile":
                    if v["oid"] not in st.blobs:
                        raise HttpError(422, "BadRequest", f"LFS object {v['oid']} was not uploaded")
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{v['oid']}\nsize {v['size']}\n"
                    files[v["path"]] = StoredFile(v["oid"], v["size"], True, git_blob_oid(pointer.encode()))
                elif key == "deletedFile":
                    if files.pop(v["path"], None) is None:
                        raise HttpError(404, "EntryNotFound", f"A file with this name doesn't exist: {v['path']}")
                else:
                    raise HttpError(400, "BadRequest", f"unsupported commit operation {key}")
            cid = st.commit(repo, head, files, header.get("summary", ""))
            repo.branches[branch] = cid
            self.hub.stats["commits"] += 1
        self.reply(200, {"success": True, "commitOid": cid, "pullRequestUrl": None,
                         "commitUrl": f"{self.hub.url}/{repo_id}/commit/{cid}"})


class HubServer:
    """The test hub on 127.0.0.1 (a free port) in a background thread; use as a context manager."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.store = Store()
        self.stats: Counter = Counter()
        self.corrupt: dict[tuple[str, str], int] = {}
        self.hidden: set[tuple[str, str]] = set()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision, as stored (for assertions)."""
        repo = self.store.repo(repo_id)
        return {p: self.store.blobs[f.sha256] for p, f in repo.commits[repo.resolve(rev)]["files"].items()}

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.store.repo(repo_id).branches[branch]
