"""What the fake Hugging Face Hub of ``hub_server.py`` answers: its repositories and routes, without sockets.

:meth:`Hub.handle` takes a request (method, target, headers, body) and returns ``(status, headers, body)`` or raises
:class:`HttpError`; ``hub_server.py`` puts it behind an HTTP server on 127.0.0.1. Repositories live in memory: a
repository is its commits (full snapshots of its files) and the commit id of ``main``, its only branch. Which
routes exist, and why those, is told in ``hub_server.py``'s docstring.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_TOKEN = "hf_test"
"""The token the fake accepts (what ``hub_server.run_with_hub`` puts in ``HF_TOKEN``)."""

DEFAULT_USER = "test-user"
"""The user the token belongs to: repos created without an organization land in this namespace."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def _git_blob_id(data: bytes) -> str:
    """The id git gives a file's content; the Hub's ETag and preupload ``oid`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    files: Mapping[str, bytes]  # a full snapshot: path in repo -> content


@dataclass
class Repo:
    head: str  # commit id of ``main``, the only branch
    commits: dict[str, Commit]


class HttpError(Exception):
    """An error answer: status, message and, for huggingface_hub's typed errors, an ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


class Unhandled(HttpError):
    """A request the fake does not implement (404, recorded in :attr:`Hub.unhandled`)."""

    def __init__(self, what: str) -> None:
        super().__init__(404, f"Not implemented by the fake hub: {what}")


def _json(payload: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError as err:
        raise HttpError(400, f"Invalid JSON body: {err}") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "Expected a JSON object")
    return payload


class Hub:
    """The repositories and the routes, independent of the socket layer; one lock serializes all requests."""

    def __init__(self) -> None:
        self.endpoint = ""  # set once the server knows its port
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.errors: list[str] = []  # tracebacks of requests that failed inside the fake
        self.unhandled: list[str] = []  # "METHOD /path" of requests the fake does not implement
        self._counter = 0

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict, bytes]:
        url = urlsplit(target)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        if url.query or "Range" in headers:
            raise Unhandled("query strings and byte ranges")
        with self.lock:
            if method == "POST" and segs == ["api", "validate-yaml"]:
                return _json({"errors": [], "warnings": []})
            if method == "POST" and segs == ["api", "repos", "create"]:
                self._authorize(headers)
                return self._create_repo(_json_object(body))
            action = segs[4] if len(segs) == 6 and segs[:2] == ["api", "models"] else None
            if method == "POST" and action in ("preupload", "commit"):
                self._authorize(headers)
                repo_id = f"{segs[2]}/{segs[3]}"
                repo = self._repo(repo_id)
                if segs[5] != "main":
                    raise HttpError(404, f"Invalid rev id: {segs[5]} (the fake has only main)", "RevisionNotFound")
                if action == "preupload":
                    return self._preupload(repo, _json_object(body))
                return self._commit(repo_id, repo, body)
            if method in ("GET", "HEAD") and len(segs) >= 5 and segs[2] == "resolve":
                return self._resolve(f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        raise Unhandled(f"{method} {url.path}")

    @staticmethod
    def _authorize(headers: Mapping[str, str]) -> None:
        given = headers.get("Authorization")
        if not given:
            raise HttpError(401, "You must be authenticated to do this")
        if given != f"Bearer {DEFAULT_TOKEN}":
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _new_commit(self, repo_id: str, repo: Repo, parent: str | None, title: str, files: dict[str, bytes]) -> str:
        self._counter += 1
        tree = "\n".join(f"{path} {_git_blob_id(data)}" for path, data in sorted(files.items()))
        oid = hashlib.sha1(f"{repo_id}\n{parent}\n{self._counter}\n{title}\n{tree}".encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, title, files)
        repo.head = oid
        return oid

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict, bytes]:
        name, namespace = payload.get("name"), payload.get("organization") or DEFAULT_USER
        if not isinstance(name, str) or not _NAME_RE.match(name) or not _NAME_RE.match(str(namespace)):
            raise HttpError(400, f"Invalid repo name: {namespace}/{name}")
        if payload.get("type", "model") not in (None, "model"):
            raise HttpError(400, "The fake hub has model repositories only")
        if payload.get("private") or payload.get("visibility") in ("private", "protected"):
            raise HttpError(400, "The fake hub has no private repositories")
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return _json({"error": "You already created this model repo", "url": url}, status=409)
        repo = self.repos[repo_id] = Repo(head="", commits={})
        self._new_commit(repo_id, repo, None, "initial commit", {".gitattributes": _GITATTRIBUTES})
        return _json({"url": url, "name": repo_id, "id": repo.head})

    @staticmethod
    def _preupload(repo: Repo, payload: dict[str, Any]) -> tuple[int, dict, bytes]:
        files = payload.get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                                  for f in files):
            raise HttpError(400, "Expected a 'files' list of objects with a 'path'")
        head = repo.commits[repo.head].files
        # The client skips a file whose git blob id equals this oid (nothing changed).
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                   "oid": _git_blob_id(head[f["path"]]) if f["path"] in head else None} for f in files]
        return _json({"files": answer, "commitOid": repo.head})

    def _commit(self, repo_id: str, repo: Repo, body: bytes) -> tuple[int, dict, bytes]:
        header, files = None, dict(repo.commits[repo.head].files)
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                raise HttpError(400, f"Invalid NDJSON line: {err}") from None
            key, value = (item.get("key"), item.get("value")) if isinstance(item, dict) else (None, None)
            if not isinstance(value, dict):
                raise HttpError(400, f"Malformed commit item {key!r}")
            if key == "header":
                header = value
            elif key == "file" and value.get("encoding") == "base64" and isinstance(value.get("content"), str):
                path = value.get("path")
                if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                    raise HttpError(400, f"Invalid path in commit: {path!r}")
                try:
                    files[path] = base64.b64decode(value["content"], validate=True)
                except ValueError as err:
                    raise HttpError(400, f"Invalid base64 content for {path}: {err}") from None
            else:
                raise HttpError(400, f"Commit item {key!r}: the fake hub implements base64 'file' items only")
        if header is None or not header.get("summary"):
            raise HttpError(400, "The commit payload has no header line with a summary")
        oid = self._new_commit(repo_id, repo, repo.head, header["summary"], files)
        return _json({"success": True, "commitOid": oid, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}",
                      "hookOutput": "", "pullRequestUrl": None})

    def _resolve(self, repo_id: str, revision: str, path: str) -> tuple[int, dict, bytes]:
        repo = self._repo(repo_id)
        commit = repo.commits.get(repo.head if revision == "main" else revision)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if path not in commit.files:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.oid,
                   "ETag": f'"{_git_blob_id(data)}"'}
        return 200, headers, data
