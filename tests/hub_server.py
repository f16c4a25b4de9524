"""A small fake of the Hugging Face Hub's HTTP protocol, for tests that must not touch the network.

The fake is dependency-free (standard library only). It serves on ``127.0.0.1`` on a free port, keeps
file contents in a temporary directory and repository metadata in memory, and speaks enough of the Hub's
protocol for ``huggingface_hub`` (2.x), ``transformers`` and ``peft`` to create repositories, push to them
and download from them end to end.

Typical use, from a test::

    from hub_server import HubServer, run_with_hub

    with HubServer() as hub:
        proc = run_with_hub(
            '''
            from huggingface_hub import create_repo, upload_file
            create_repo("test-user/demo", exist_ok=True)
            upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="test-user/demo")
            ''',
            hub,
        )
        assert proc.returncode == 0, proc.stderr
        assert hub.repo_files("test-user/demo")["a.txt"] == b"hello"

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_TOKEN`` when it is imported, which is why the client
runs in a subprocess (:func:`run_with_hub`) whose environment is set up before anything is imported.
Code that sets the variables of :meth:`HubServer.client_env` itself before importing ``huggingface_hub``
may also talk to the server in-process.

What is implemented (paths are relative to :attr:`HubServer.endpoint`; ``{type}`` is ``models``,
``datasets`` or ``spaces``; a revision is a branch, ``refs/heads/<branch>``, ``refs/pr/<n>`` or a full
commit id):

* ``GET /api/whoami-v2``; ``POST /api/validate-yaml`` (always valid);
* ``POST /api/repos/create`` (``visibility``/``private``, ``type``; 409 when it exists) and
  ``DELETE /api/repos/delete``; ``PUT /api/{type}/{repo}/settings`` (``private`` only);
* ``GET /api/{type}/{repo}`` and ``GET /api/{type}/{repo}/revision/{rev}`` (info with ``sha`` and
  ``siblings``; ``?blobs=true`` adds sizes, blob ids and LFS info);
* ``GET /api/{type}/{repo}/tree/{rev}[/{path}]`` (``recursive``), ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET .../commits/{rev}``, ``POST``/``DELETE .../branch/{name}``;
* ``POST /api/{type}/{repo}/preupload/{rev}`` and the NDJSON ``POST .../commit/{rev}`` (``file`` with
  base64 content, ``lfsFile``, ``deletedFile``, ``deletedFolder``; ``parentCommit``; ``?create_pr=1``);
* ``HEAD``/``GET /[{type}/]{repo}/resolve/{rev}/{path}`` (also under ``/api/{type}/``) with
  ``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  and single byte ranges;
* the basic git-LFS upload protocol (``POST /{repo}.git/info/lfs/objects/batch``, then ``PUT`` and
  ``verify`` on URLs of this server), used only when ``lfs_threshold`` is set. By default every file is
  "regular": the preupload answer says so, and the client sends all contents inline in the commit.

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that
``huggingface_hub`` turns into its typed exceptions. Xet storage is not implemented: the server never
advertises it, so downloads and (regular) uploads take the plain HTTP paths.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_USER",
    "CommitRecord",
    "HubClientError",
    "HubServer",
    "RequestRecord",
    "StoredFile",
    "run_with_hub",
]

DEFAULT_TOKEN = "hf_test"
"""The token the server accepts by default (what :func:`run_with_hub` puts in ``HF_TOKEN``)."""

DEFAULT_USER = "test-user"
"""The user name the default token belongs to; bare repo names are created in this namespace."""

MAX_BODY_BYTES = 1024 * 1024 * 1024
"""Largest request body the server reads; larger requests get 413."""

_MAX_CHUNKS = 1_000_000  # bound on the number of chunks read from one chunked request body
_MAX_PENDING_LFS_UPLOADS = 10_000
_IDLE_CONNECTION_TIMEOUT_S = 30.0  # an idle keep-alive connection is closed after this long

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Path segments that follow a repo id in API URLs (a repo id has one or two segments).
_API_SUBPATHS = {
    "revision",
    "preupload",
    "commit",
    "commits",
    "tree",
    "paths-info",
    "branch",
    "refs",
    "resolve",
    "settings",
    "discussions",
    "lfs-files",
    "xet-read-token",
    "xet-write-token",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"
    b"*.h5 filter=lfs diff=lfs merge=lfs -text\n"
    b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit: where its content is and how the Hub describes it.

    Attributes:
        blob: git blob id (sha1 of ``b"blob <size>\\0" + content``); also the key of the content on disk.
        size: content size in bytes.
        sha256: sha256 of the content (the LFS object id).
        lfs: whether the file was committed as an LFS file.
    """

    blob: str
    size: int
    sha256: str
    lfs: bool

    @property
    def pointer(self) -> bytes:
        """The git-LFS pointer file that stands for this file in git."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def git_oid(self) -> str:
        """The id git gives this path: the blob id, or the id of the pointer file for LFS files."""
        return _git_blob_id(self.pointer) if self.lfs else self.blob

    @property
    def etag(self) -> str:
        """The ETag the server sends for this file (sha256 for LFS files, blob id otherwise)."""
        return self.sha256 if self.lfs else self.blob


@dataclass(frozen=True)
class CommitRecord:
    """A commit of a fake repository: a full snapshot of its files.

    Attributes:
        oid: 40-hex commit id.
        parent: id of the parent commit, ``None`` for the first one.
        title: commit summary.
        description: commit description.
        author: user that made the commit.
        date: ISO-8601 time of the commit, as the Hub writes it.
        files: path in repo -> stored file.
    """

    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: Mapping[str, StoredFile]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (see :attr:`HubServer.requests`)."""

    method: str
    path: str
    status: int


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit id
    commits: dict[str, CommitRecord] = field(default_factory=dict)
    n_pull_requests: int = 0


class _HttpError(Exception):
    """An error answer: status, optional ``X-Error-Code`` and a message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass
class _Request:
    method: str
    segments: list[str]  # percent-decoded path segments
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json_object(self) -> dict[str, Any]:
        """The body parsed as a JSON object (an empty body reads as ``{}``); 400 otherwise."""
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError as err:
            raise _HttpError(400, f"Invalid JSON body: {err}") from None
        if not isinstance(payload, dict):
            raise _HttpError(400, "Expected a JSON object")
        return payload


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, content_type: str = "application/json") -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type})


# --------------------------------------------------------------------------------------------- helpers


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _normalize_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in _URL_PREFIXES:
        raise ValueError(f"Unsupported repo type {repo_type!r}; expected one of {sorted(_URL_PREFIXES)}")
    return repo_type


def _split_repo_id(segments: list[str]) -> tuple[str, list[str]]:
    """Split ``[ns, name, *rest]`` or ``[name, *rest]`` into a repo id and the rest of the path."""
    if not segments or not segments[0]:
        raise _HttpError(404, "Missing repository id", "RepoNotFound")
    if len(segments) >= 2 and segments[1] not in _API_SUBPATHS:
        return f"{segments[0]}/{segments[1]}", segments[2:]
    return segments[0], segments[1:]


class _BlobStore:
    """Content-addressed file contents on disk, keyed by git blob id, with a sha256 index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._by_sha256: dict[str, str] = {}

    def put(self, data: bytes) -> tuple[str, str]:
        """Store ``data``; return its (git blob id, sha256)."""
        blob = _git_blob_id(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.root / blob
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._by_sha256[sha256] = blob
        return blob, sha256

    def get(self, blob: str) -> bytes:
        return (self.root / blob).read_bytes()

    def blob_for_sha256(self, sha256: str) -> str | None:
        return self._by_sha256.get(sha256)


# --------------------------------------------------------------------------------------------- the app


class _HubApp:
    """The Hub's state and its HTTP routes, independent of the socket layer.

    All state changes and reads happen under one lock, so requests from many threads see a consistent view.
    """

    def __init__(self, root: Path, *, token: str | None, user: str, lfs_threshold: int | None) -> None:
        self.endpoint = ""  # set once the server knows its port
        self.token = token
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.lock = threading.RLock()
        self.blobs = _BlobStore(root / "blobs")
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.pending_lfs: dict[str, tuple[str, int]] = {}  # upload ticket -> (sha256, size)
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)
        self.errors: list[str] = []  # tracebacks of requests that failed inside the server
        self.unhandled: list[str] = []  # "METHOD /path" of requests no route matched
        self._counter = 0

    # ------------------------------------------------------------------ state

    def _new_commit_id(self, *parts: str) -> str:
        self._counter += 1
        seed = "\n".join([*parts, str(self._counter), str(time.time_ns())])
        return hashlib.sha1(seed.encode()).hexdigest()

    def url_path(self, repo: _Repo) -> str:
        return f"{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> _Repo:
        """Create a repository with a first commit holding ``.gitattributes``, like the Hub does."""
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise _HttpError(409, f"You already created this {repo_type} repo")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            self.repos[key] = repo
            files = {".gitattributes": self._store(_GITATTRIBUTES, lfs=False)}
            self._commit(repo, "main", files, parent=None, title="initial commit", description="", author=author)
            return repo

    def _store(self, data: bytes, *, lfs: bool) -> StoredFile:
        blob, sha256 = self.blobs.put(data)
        return StoredFile(blob=blob, size=len(data), sha256=sha256, lfs=lfs)

    def _commit(
        self,
        repo: _Repo,
        ref: str,
        files: dict[str, StoredFile],
        *,
        parent: str | None,
        title: str,
        description: str,
        author: str,
    ) -> CommitRecord:
        tree = "\n".join(f"{path} {f.git_oid}" for path, f in sorted(files.items()))
        oid = self._new_commit_id(repo.repo_id, str(parent), title, tree)
        commit = CommitRecord(oid, parent, title, description, author, _now(), dict(files))
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        return commit

    def get_repo(self, repo_type: str, repo_id: str, request: _Request | None = None) -> _Repo:
        """The repository, or a RepoNotFound error (also for a private repo read without a valid token)."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if request is not None and repo.private and self._user(request) is None:
            raise _HttpError(401, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def ref_name(revision: str) -> str:
        return revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision

    def resolve(self, repo: _Repo, revision: str) -> CommitRecord:
        """The commit a revision points at, or a RevisionNotFound error."""
        name = self.ref_name(revision)
        if name in repo.refs:
            return repo.commits[repo.refs[name]]
        if _COMMIT_RE.match(revision) and revision in repo.commits:
            return repo.commits[revision]
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # ------------------------------------------------------------------ auth

    def _user(self, request: _Request) -> str | None:
        """The user a request authenticates as; ``None`` without credentials; 401 on a wrong token."""
        header = request.headers.get("Authorization") or request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or (self.token is not None and token != self.token):
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return self.user

    def _writer(self, request: _Request) -> str:
        user = self._user(request)
        if user is None:
            raise _HttpError(401, "You must be authenticated to do this")
        return user

    # ------------------------------------------------------------------ routing

    def handle(self, request: _Request) -> _Response:
        segs = request.segments
        method = request.method
        with self.lock:
            if segs[:1] == ["api"]:
                return self._route_api(request, segs[1:])
            if segs[:2] == ["_fakehub", "lfs"] and len(segs) >= 3:
                return self._route_lfs_transfer(request, segs[2:])
            if len(segs) >= 5 and segs[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
                return self._lfs_batch(request, segs[:-4])
            if "resolve" in segs[:4] and method in ("GET", "HEAD"):
                repo_type = "model"
                rest = segs
                if segs[0] in ("datasets", "spaces") and "resolve" in segs[2:4]:
                    repo_type, rest = _REPO_TYPES[segs[0]], segs[1:]
                repo_id, rest = _split_repo_id(rest)
                if rest[:1] == ["resolve"] and len(rest) >= 3:
                    return self._resolve_file(request, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        raise _HttpError(404, f"No route for {method} /{'/'.join(segs)}", headers={"X-Fakehub-Unhandled": "1"})

    def _route_api(self, request: _Request, segs: list[str]) -> _Response:
        method = request.method
        if segs == ["whoami-v2"] and method == "GET":
            return self._whoami(request)
        if segs == ["validate-yaml"] and method == "POST":
            return _Response.json({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo(request)
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(request)
        if segs and segs[0] in _REPO_TYPES and len(segs) >= 2:
            repo_type = _REPO_TYPES[segs[0]]
            repo_id, rest = _split_repo_id(segs[1:])
            action = rest[0] if rest else ""
            if action == "" and method == "GET":
                return self._info(request, repo_type, repo_id, "main")
            if action == "revision" and len(rest) == 2 and method == "GET":
                return self._info(request, repo_type, repo_id, rest[1])
            if action == "tree" and len(rest) >= 2 and method == "GET":
                return self._tree(request, repo_type, repo_id, rest[1], "/".join(rest[2:]))
            if action == "paths-info" and len(rest) == 2 and method == "POST":
                return self._paths_info(request, repo_type, repo_id, rest[1])
            if action == "preupload" and len(rest) == 2 and method == "POST":
                return self._preupload(request, repo_type, repo_id, rest[1])
            if action == "commit" and len(rest) == 2 and method == "POST":
                return self._commit_endpoint(request, repo_type, repo_id, rest[1])
            if action == "commits" and len(rest) == 2 and method == "GET":
                return self._list_commits(request, repo_type, repo_id, rest[1])
            if action == "refs" and len(rest) == 1 and method == "GET":
                return self._refs(request, repo_type, repo_id)
            if action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
                return self._branch(request, repo_type, repo_id, rest[1])
            if action == "settings" and len(rest) == 1 and method == "PUT":
                return self._settings(request, repo_type, repo_id)
            if action == "resolve" and len(rest) >= 3 and method in ("GET", "HEAD"):
                return self._resolve_file(request, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        raise _HttpError(404, f"No route for {method} /api/{'/'.join(segs)}", headers={"X-Fakehub-Unhandled": "1"})

    # ------------------------------------------------------------------ account and repos

    def _whoami(self, request: _Request) -> _Response:
        user = self._user(request)
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return _Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}},
            }
        )

    def _repo_id_from_payload(self, payload: dict, user: str) -> tuple[str, str]:
        name = payload.get("name")
        namespace = payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not _NAME_RE.match(name) or not _NAME_RE.match(str(namespace)):
            raise _HttpError(400, f"Invalid repo name: {namespace}/{name}")
        if repo_type not in _URL_PREFIXES:
            raise _HttpError(400, f"Invalid repo type: {repo_type}")
        return repo_type, f"{namespace}/{name}"

    def _create_repo(self, request: _Request) -> _Response:
        user = self._writer(request)
        payload = request.json_object()
        repo_type, repo_id = self._repo_id_from_payload(payload, user)
        visibility = payload.get("visibility")
        private = visibility in ("private", "protected") if visibility is not None else bool(payload.get("private"))
        url = f"{self.endpoint}/{_URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return _Response.json({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
        repo = self.create_repo(repo_type, repo_id, private=private, author=user)
        return _Response.json({"url": url, "name": repo_id, "id": repo.refs["main"]})

    def _delete_repo(self, request: _Request) -> _Response:
        user = self._writer(request)
        repo_type, repo_id = self._repo_id_from_payload(request.json_object(), user)
        self.get_repo(repo_type, repo_id)
        del self.repos[(repo_type, repo_id)]
        return _Response(200, b"", {"Content-Type": "text/plain"})

    def _settings(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        self._writer(request)
        repo = self.get_repo(repo_type, repo_id, request)
        payload = request.json_object()
        if "private" in payload:
            repo.private = bool(payload["private"])
        if payload.get("visibility") is not None:
            repo.private = payload["visibility"] in ("private", "protected")
        return _Response.json({"private": repo.private})

    # ------------------------------------------------------------------ reads

    def _sibling(self, path: str, f: StoredFile, with_blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path}
        if with_blobs:
            sibling.update(size=f.size, blobId=f.git_oid)
            if f.lfs:
                sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(f.pointer)}
        return sibling

    def _info(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        commit = self.resolve(repo, revision)
        with_blobs = request.flag("blobs")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [self._sibling(p, f, with_blobs) for p, f in sorted(commit.files.items())],
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        return _Response.json(info)

    @staticmethod
    def _file_entry(path: str, f: StoredFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        return entry

    @staticmethod
    def _folder_entry(path: str, files: Mapping[str, StoredFile]) -> dict[str, Any]:
        prefix = path + "/"
        listing = "\n".join(f"{p} {f.git_oid}" for p, f in sorted(files.items()) if p.startswith(prefix))
        return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}

    @staticmethod
    def _folders(files: Mapping[str, StoredFile]) -> set[str]:
        folders: set[str] = set()
        for path in files:
            parts = path.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return folders

    def _tree(self, request: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        commit = self.resolve(repo, revision)
        files, folders = commit.files, self._folders(commit.files)
        path = path.strip("/")
        if path and path not in folders:
            raise _HttpError(404, f"Path {path} not found in tree", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = f"{path}/" if path else ""
        recursive = request.flag("recursive")

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        entries = [self._folder_entry(p, files) for p in sorted(folders) if wanted(p)]
        entries += [self._file_entry(p, f) for p, f in sorted(files.items()) if wanted(p)]
        return _Response.json(entries)

    def _paths_info(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        commit = self.resolve(repo, revision)
        content_type = request.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = request.json_object().get("paths", [])
        else:
            paths = parse_qs(request.body.decode(), keep_blank_values=True).get("paths", [])
        folders = self._folders(commit.files)
        entries = []
        for raw in paths if isinstance(paths, list) else [paths]:
            p = str(raw).strip("/")
            if p in commit.files:
                entries.append(self._file_entry(p, commit.files[p]))
            elif p in folders:
                entries.append(self._folder_entry(p, commit.files))
        return _Response.json(entries)

    def _list_commits(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        commit: CommitRecord | None = self.resolve(repo, revision)
        items = []
        for _ in range(len(repo.commits)):  # bounded walk to the root
            if commit is None:
                break
            items.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.description,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return _Response.json(items)

    def _refs(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        branches, prs = [], []
        for name, oid in sorted(repo.refs.items()):
            if name.startswith("refs/pr/"):
                prs.append({"name": name.split("/")[-1], "ref": name, "targetCommit": oid})
            else:
                branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid})
        payload: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if request.flag("include_prs"):
            payload["pullRequests"] = prs
        return _Response.json(payload)

    def _resolve_file(
        self, request: _Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> _Response:
        repo = self.get_repo(repo_type, repo_id, request)
        commit = self.resolve(repo, revision)
        f = commit.files.get(path)
        if f is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.blobs.get(f.blob)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        byte_range = request.headers.get("Range")
        if byte_range and request.method == "GET":
            start, end = self._parse_range(byte_range, len(data))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return _Response(206, data[start : end + 1], headers)
        return _Response(200, data, headers)

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int]:
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
        if not match or (not match.group(1) and not match.group(2)):
            raise _HttpError(416, f"Unsupported range {header!r}", headers={"Content-Range": f"bytes */{size}"})
        first, last = match.group(1), match.group(2)
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(last)), size - 1
        if start >= size or start > end:
            raise _HttpError(416, f"Range {header!r} not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return start, end

    # ------------------------------------------------------------------ writes

    def _branch(self, request: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        self._writer(request)
        repo = self.get_repo(repo_type, repo_id, request)
        name = self.ref_name(branch)
        if request.method == "DELETE":
            if name not in repo.refs:
                raise _HttpError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if name == "main":
                raise _HttpError(403, "Cannot delete the main branch")
            del repo.refs[name]
            return _Response.json({})
        if name in repo.refs:
            raise _HttpError(409, f"Reference already exists: refs/heads/{name}")
        if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", name) or name.startswith("refs/"):
            raise _HttpError(400, f"Invalid branch name {name!r}")
        start = request.json_object().get("startingPoint") or "main"
        if not isinstance(start, str):
            raise _HttpError(400, "startingPoint must be a revision string")
        repo.refs[name] = self.resolve(repo, start).oid
        return _Response.json({})

    def upload_mode(self, size: int) -> str:
        """``"lfs"`` for files at least ``lfs_threshold`` bytes long (when set), else ``"regular"``."""
        if self.lfs_threshold is not None and size > 0 and size >= self.lfs_threshold:
            return "lfs"
        return "regular"

    def _preupload(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        self._writer(request)
        repo = self.get_repo(repo_type, repo_id, request)
        commit = self.resolve(repo, revision)
        files = request.json_object().get("files")
        if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
            raise _HttpError(400, "Expected a 'files' list of objects")
        answer = []
        for item in files:
            path, size = item.get("path"), item.get("size", 0)
            if not isinstance(path, str) or not isinstance(size, int):
                raise _HttpError(400, f"Malformed preupload entry {item!r}")
            existing = commit.files.get(path)
            mode = self.upload_mode(size)
            oid = None
            if existing is not None:
                # The client compares this with the sha256 (LFS) or git blob id (regular) of its local file.
                oid = existing.sha256 if mode == "lfs" else existing.blob
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _Response.json({"files": answer, "commitOid": commit.oid})

    def _commit_endpoint(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        user = self._writer(request)
        repo = self.get_repo(repo_type, repo_id, request)
        header, operations = self._parse_commit_body(request)

        ref = self.ref_name(revision)
        if ref not in repo.refs:
            if _COMMIT_RE.match(revision) and revision in repo.commits:
                raise _HttpError(400, "Cannot commit to a commit id; use a branch name")
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.refs[ref]]
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != head.oid:
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")

        summary = header.get("summary") or ""
        if not summary:
            raise _HttpError(400, "Commit summary must not be empty")
        description = header.get("description") or ""
        files = dict(head.files)
        for key, value in operations:
            self._apply_operation(files, key, value)

        pr_url = None
        if request.flag("create_pr"):  # the commit goes to a new pull-request ref based on `revision`
            repo.n_pull_requests += 1
            ref = f"refs/pr/{repo.n_pull_requests}"
            pr_url = f"{self.endpoint}/{self.url_path(repo)}/discussions/{repo.n_pull_requests}"
        commit = self._commit(repo, ref, files, parent=head.oid, title=summary, description=description, author=user)
        return _Response.json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.endpoint}/{self.url_path(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    @staticmethod
    def _parse_commit_body(request: _Request) -> tuple[dict, list[tuple[str, dict]]]:
        """Parse the NDJSON commit payload into its header and its operations."""
        header: dict | None = None
        operations: list[tuple[str, dict]] = []
        for line in request.body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                raise _HttpError(400, f"Invalid NDJSON line: {err}") from None
            key, value = item.get("key"), item.get("value")
            if not isinstance(value, dict):
                raise _HttpError(400, f"Malformed commit item {key!r}")
            if key == "header":
                header = value
            else:
                operations.append((key, value))
        if header is None:
            raise _HttpError(400, "The commit payload has no header line")
        return header, operations

    def _apply_operation(self, files: dict[str, StoredFile], key: str, value: dict) -> None:
        path = value.get("path")
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            raise _HttpError(400, f"Invalid path in commit: {path!r}")
        if key == "file":
            content = value.get("content", "")
            encoding = value.get("encoding", "utf-8")
            if not isinstance(content, str):
                raise _HttpError(400, f"File content for {path} must be a string")
            try:
                data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
            except ValueError as err:
                raise _HttpError(400, f"Invalid base64 content for {path}: {err}") from None
            files[path] = self._store(data, lfs=False)
        elif key == "lfsFile":
            oid = value.get("oid")
            blob = self.blobs.blob_for_sha256(oid) if isinstance(oid, str) else None
            if blob is None:
                raise _HttpError(400, f"LFS object {oid} for {path} was never uploaded to this server")
            size = len(self.blobs.get(blob))
            files[path] = StoredFile(blob=blob, size=size, sha256=oid, lfs=True)
        elif key == "deletedFile":
            if path not in files:
                raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise _HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise _HttpError(400, f"Unknown commit operation {key!r}")

    # ------------------------------------------------------------------ LFS (basic transfer)

    def _lfs_batch(self, request: _Request, segs: list[str]) -> _Response:
        self._writer(request)
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces") and len(segs) >= 2:
            repo_type, segs = _REPO_TYPES[segs[0]], segs[1:]
        if not segs or not segs[-1].endswith(".git"):
            raise _HttpError(404, "Not a git LFS path", "RepoNotFound")
        repo_id = "/".join([*segs[:-1], segs[-1][: -len(".git")]])
        self.get_repo(repo_type, repo_id, request)
        payload = request.json_object()
        if payload.get("operation") != "upload":
            raise _HttpError(400, "Only the 'upload' LFS operation is supported")
        requested = payload.get("objects", [])
        if not isinstance(requested, list) or not all(isinstance(obj, dict) for obj in requested):
            raise _HttpError(400, "Expected an 'objects' list of objects")
        objects = []
        for obj in requested:
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                raise _HttpError(400, f"Malformed LFS object {obj!r}")
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if self.blobs.blob_for_sha256(oid) is None:
                if len(self.pending_lfs) >= _MAX_PENDING_LFS_UPLOADS:
                    self.pending_lfs.clear()
                ticket = secrets.token_hex(16)
                self.pending_lfs[ticket] = (oid, size)
                base = f"{self.endpoint}/_fakehub/lfs/{ticket}"
                answer["actions"] = {"upload": {"href": base}, "verify": {"href": f"{base}/verify"}}
            objects.append(answer)
        return _Response.json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _route_lfs_transfer(self, request: _Request, segs: list[str]) -> _Response:
        ticket = segs[0]
        if ticket not in self.pending_lfs:
            raise _HttpError(404, "Unknown or expired LFS upload")
        oid, size = self.pending_lfs[ticket]
        if segs[1:] == [] and request.method == "PUT":
            data = request.body
            if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                raise _HttpError(400, "Uploaded content does not match the announced sha256/size")
            self.blobs.put(data)
            return _Response(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
        if segs[1:] == ["verify"] and request.method == "POST":
            if self.blobs.blob_for_sha256(oid) is None:
                raise _HttpError(404, "LFS object was not uploaded")
            del self.pending_lfs[ticket]
            return _Response.json({"oid": oid, "size": size})
        raise _HttpError(404, "No such LFS transfer route")


# --------------------------------------------------------------------------------------------- HTTP layer


class _HubHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose handler threads are daemons and whose connections can be cut."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, app: _HubApp) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away; record anything else instead of printing it to stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # connection reset, broken pipe, connection cut by stop()
            return
        self.app.errors.append(f"connection from {client_address}\n{traceback.format_exc()}")

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, hands it to the app, writes the answer (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = _IDLE_CONNECTION_TIMEOUT_S
    server: _HubHTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Silence the default stderr access log; requests are recorded in :attr:`HubServer.requests`."""

    def do_GET(self) -> None:  # noqa: N802 - name required by BaseHTTPRequestHandler
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked), at most ``MAX_BODY_BYTES``."""
        try:
            return self._read_body_unchecked()
        except ValueError as err:  # a malformed Content-Length or chunk size
            self.close_connection = True
            raise _HttpError(400, f"Malformed request body: {err}") from None

    def _read_body_unchecked(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            for _ in range(_MAX_CHUNKS):
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(100):  # trailer lines, up to the blank line
                        if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    raise _HttpError(413, "Request body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk
            raise _HttpError(413, "Too many chunks in request body")
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise _HttpError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        try:
            body = self._read_body()
            request = _Request(
                method=method,
                segments=[unquote(s) for s in url.path.split("/")[1:] if s != ""] or [""],
                query=parse_qs(url.query, keep_blank_values=True),
                headers=self.headers,
                body=body,
            )
            response = app.handle(request)
        except _HttpError as err:
            if err.status == 413:
                self.close_connection = True
            if err.headers.pop("X-Fakehub-Unhandled", None):
                app.unhandled.append(f"{method} {url.path}")
            headers = {"Content-Type": "application/json", **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            response = _Response(err.status, json.dumps({"error": err.message}).encode(), headers)
        except Exception:  # a bug in the fake: answer 500 and keep the traceback for the test to show
            app.errors.append(f"{method} {self.path}\n{traceback.format_exc()}")
            response = _Response(500, b'{"error": "internal error in fake hub"}', {"Content-Type": "application/json"})
        app.requests.append(RequestRecord(method, url.path, response.status))
        self._write(method, response)

    def _write(self, method: str, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            # Header values must be latin-1 on the wire; messages are ASCII-escaped to be safe.
            self.send_header(name, value.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " "))
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD" and response.body:
            self.wfile.write(response.body)


# --------------------------------------------------------------------------------------------- public API


class HubServer:
    """A fake Hugging Face Hub serving on ``127.0.0.1`` on a free port.

    Use it as a context manager (``with HubServer() as hub: ...``) or call :meth:`start`/:meth:`stop`.

    Args:
        root: directory where file contents are stored; a fresh temporary directory (removed on
            :meth:`stop`) when ``None``.
        token: the only bearer token the server accepts, or ``None`` to accept any token. Writes always
            need a token; reads of public repos need none.
        user: the user name the token belongs to (namespace of bare repo names, author of commits).
        lfs_threshold: when set, the preupload answer asks for files of at least this many bytes to be
            uploaded through the git-LFS batch protocol (needs ``HF_HUB_DISABLE_XET=1`` in the client,
            which :func:`run_with_hub` sets); by default every file is uploaded inline as "regular".
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        token: str | None = DEFAULT_TOKEN,
        user: str = DEFAULT_USER,
        lfs_threshold: int | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-hub-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self._app = _HubApp(self.root, token=token, user=user, lfs_threshold=lfs_threshold)
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubServer:
        """Bind to a free port on 127.0.0.1 and serve from a daemon thread. Returns ``self``."""
        if self._server is not None:
            return self
        self._server = _HubHTTPServer(self._app)
        self._app.endpoint = self.endpoint
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-hub", daemon=True
        )
        self._thread.start()
        _live_servers.add(self)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and remove the temporary directory (if it made one)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        _live_servers.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (only while started)."""
        if self._server is None:
            raise RuntimeError("HubServer is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``, e.g. ``"http://127.0.0.1:53211"``."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ client environment

    def client_env(
        self, hf_home: str | os.PathLike[str], extra_env: Mapping[str, str | None] | None = None
    ) -> dict[str, str]:
        """Environment for a client process talking to this server.

        Starts from ``os.environ`` without Hugging Face, offline and proxy variables, then sets
        ``HF_ENDPOINT``, ``HF_TOKEN`` (the server's token), ``HF_HOME`` (cache and config), telemetry,
        progress bars and Xet off, offline mode off, and puts this ``tests`` directory first on
        ``PYTHONPATH``. ``extra_env`` is applied last; a ``None`` value removes the variable.
        """
        dropped_prefixes = ("HF_", "HUGGINGFACE_")
        dropped = {
            "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "PEFT_HOME",
            "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped_prefixes) and k not in dropped}
        tests_dir = str(Path(__file__).resolve().parent)
        python_path = [tests_dir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            {
                "HF_ENDPOINT": self.endpoint,
                "HF_TOKEN": self.token or DEFAULT_TOKEN,
                "HF_HOME": str(hf_home),
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_OFFLINE": "0",
                "TRANSFORMERS_OFFLINE": "0",
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
                "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                "PYTHONPATH": os.pathsep.join(python_path),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for key, value in (extra_env or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def new_client_home(self) -> Path:
        """A fresh, empty ``HF_HOME`` directory under the server's root (so nothing is cached yet)."""
        clients = self.root / "clients"
        clients.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="hf-home-", dir=clients))

    # ------------------------------------------------------------------ inspection and seeding

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repository exists on the server."""
        with self._app.lock:
            return (_normalize_repo_type(repo_type), repo_id) in self._app.repos

    def is_private(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repository is private."""
        with self._app.lock:
            return self._repo(repo_id, repo_type).private

    def repo_files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """Contents of every file of a repository at a revision: path in repo -> bytes.

        Includes the ``.gitattributes`` file the server puts in every new repository.
        """
        with self._app.lock:
            commit = self._app.resolve(self._repo(repo_id, repo_type), revision)
            return {path: self._app.blobs.get(f.blob) for path, f in sorted(commit.files.items())}

    def stored_files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, StoredFile]:
        """How each file of a revision is stored (blob id, size, sha256, whether LFS)."""
        with self._app.lock:
            return dict(self._app.resolve(self._repo(repo_id, repo_type), revision).files)

    def head(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Commit id a revision points at."""
        with self._app.lock:
            return self._app.resolve(self._repo(repo_id, repo_type), revision).oid

    def history(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[CommitRecord]:
        """Commits reachable from a revision, newest first (the last one is the repo's initial commit)."""
        with self._app.lock:
            repo = self._repo(repo_id, repo_type)
            commit: CommitRecord | None = self._app.resolve(repo, revision)
            history = []
            for _ in range(len(repo.commits)):
                if commit is None:
                    break
                history.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history

    def refs(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        """Branches and pull-request refs of a repository: name -> commit id."""
        with self._app.lock:
            return dict(self._repo(repo_id, repo_type).refs)

    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        repo_type: str = "model",
        private: bool = False,
    ) -> str:
        """Create a repository directly on the server (no HTTP), optionally with files; returns its head.

        Handy to seed a repo that a test then downloads from.
        """
        with self._app.lock:
            repo = self._app.create_repo(_normalize_repo_type(repo_type), repo_id, private=private, author=self.user)
            if files:
                head = repo.commits[repo.refs["main"]]
                new_files = dict(head.files)
                for path, data in files.items():
                    new_files[path] = self._app._store(bytes(data), lfs=False)
                self._app._commit(
                    repo, "main", new_files, parent=head.oid, title="Seed files", description="", author=self.user
                )
            return repo.refs["main"]

    @property
    def requests(self) -> list[RequestRecord]:
        """The latest requests answered (at most 10,000), oldest first."""
        with self._app.lock:
            return list(self._app.requests)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of requests that crashed inside the fake (answered 500); empty when all is well."""
        return list(self._app.errors)

    @property
    def unhandled(self) -> list[str]:
        """``"METHOD /path"`` of requests that matched no route (answered 404)."""
        return list(self._app.unhandled)

    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        repo = self._app.repos.get((_normalize_repo_type(repo_type), repo_id))
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id!r} on the fake hub")
        return repo


_live_servers: weakref.WeakSet[HubServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        try:
            server.stop()
        except Exception:  # best effort at interpreter exit
            pass


class HubClientError(AssertionError):
    """A client snippet run by :func:`run_with_hub` with ``check=True`` failed; carries its output."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"client exited with {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        self.proc = proc


def run_with_hub(
    code: str,
    hub: HubServer,
    extra_env: Mapping[str, str | None] | None = None,
    *,
    timeout: float = 300.0,
    check: bool = False,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a subprocess that talks to ``hub``.

    The snippet is dedented and run with ``sys.executable -c``. Its environment is
    :meth:`HubServer.client_env` with a fresh ``HF_HOME`` (pass ``HF_HOME`` in ``extra_env`` to share a
    cache between runs). stdout and stderr are captured as text.

    Args:
        code: Python source to run.
        hub: a started :class:`HubServer`.
        extra_env: variables to add or override (``None`` values remove a variable).
        timeout: seconds before the subprocess is killed (``subprocess.TimeoutExpired`` is raised).
        check: raise :class:`HubClientError` (with the output) when the snippet exits non-zero.
        cwd: working directory of the subprocess.

    Returns:
        The completed process (``returncode``, ``stdout``, ``stderr``).
    """
    env_overrides = dict(extra_env or {})
    home = env_overrides.pop("HF_HOME", None) or str(hub.new_client_home())
    env = hub.client_env(home, env_overrides)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise HubClientError(proc)
    return proc


if __name__ == "__main__":  # pragma: no cover - manual use: serve until interrupted
    with HubServer() as _hub:
        print(f"fake hub at {_hub.endpoint} (token {_hub.token!r}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
