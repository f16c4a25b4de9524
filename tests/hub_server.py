"""A small fake of the Hugging Face Hub's HTTP protocol on 127.0.0.1, for tests that must not touch the network.

Standard library only; repositories live in memory. ``hub_protocol.py`` holds the repositories and the routes; this
module puts them behind an HTTP server and runs client code against it. Typical use::

    from hub_server import HubServer, run_with_hub

    with HubServer() as hub:
        run_with_hub('''
            from huggingface_hub import create_repo, upload_file
            create_repo("test-user/demo")
            upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="test-user/demo")
        ''', hub, check=True)
        assert hub.repo_files("test-user/demo")["a.txt"] == b"hello"

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_TOKEN`` when it is imported, which is why the client runs in a
subprocess (:func:`run_with_hub`) whose environment (:meth:`HubServer.client_env`) is set before any import.

What is implemented is what the product's Hub tests send (``tests/test_hub.py``: ``push_adapter_to_hub``, peft's
``push_to_hub`` and ``upload_folder``, then ``load_gradiend_model`` and ``PeftModel.from_pretrained``; logged one by
one, over the routes below and nothing else, which that file's fixture checks):

* ``POST /api/repos/create`` (model repos; 409 when it exists, which ``exist_ok=True`` accepts; a private repo is
  refused with 400 rather than made public);
* ``POST /api/validate-yaml`` (model cards; always valid);
* ``POST /api/models/{ns}/{name}/preupload/main`` (every file "regular", i.e. sent inline; an existing file's git
  blob id, so a client skips unchanged files) and the NDJSON ``POST .../commit/main`` with base64 ``file`` items;
* ``HEAD``/``GET /{ns}/{name}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob id) and
  ``Content-Length``, and the ``X-Error-Code`` that ``huggingface_hub`` turns into its typed exceptions: pushing,
  peft probes the base model's ``config.json`` (``RepoNotFound``) and an existing ``README.md`` (``EntryNotFound``).
  ``rev`` is ``main``, which is all the product asks for, or a commit id, since the answer's ``X-Repo-Commit`` invites
  clients to pin later downloads to it (``RevisionNotFound`` otherwise).

Writes need ``Authorization: Bearer`` :data:`DEFAULT_TOKEN`, as on the Hub. Anything else (another route or method,
a query string, a byte range) is answered 404 and listed in :attr:`HubServer.unhandled`, so that a client that starts
using more of the protocol fails loudly rather than against a half-made answer. Not implemented, as nothing uses
them: branches, pull requests, private repos, repo info/tree/paths-info, deletions, git-LFS and Xet uploads (the
client environment turns Xet off and the preupload answer never asks for LFS), chunked request bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hub_protocol import DEFAULT_TOKEN, DEFAULT_USER, Commit, Hub, HttpError, Unhandled

__all__ = ["DEFAULT_TOKEN", "DEFAULT_USER", "HubClientError", "HubServer", "run_with_hub"]

MAX_BODY_BYTES = 256 * 1024 * 1024
"""Largest request body the server reads (contents are kept in memory); larger requests get 413."""

_IDLE_CONNECTION_TIMEOUT_S = 30.0  # an idle keep-alive connection is closed after this long


# --------------------------------------------------------------------------------------------- HTTP layer


class _HTTPServer(ThreadingHTTPServer):
    """Daemon handler threads, and a record of open connections so that :meth:`HubServer.stop` can cut them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away; record anything else instead of printing it to stderr."""
        if not isinstance(sys.exc_info()[1], OSError):
            self.hub.errors.append(f"connection from {client_address}\n{traceback.format_exc()}")

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, hands it to the hub, writes the answer (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/2.0"
    timeout = _IDLE_CONNECTION_TIMEOUT_S
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Silence the default stderr access log."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HttpError(411, "Chunked request bodies are not implemented by the fake hub; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, "Malformed Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        method, hub = self.command, self.server.hub
        try:
            status, headers, body = hub.handle(method, self.path, self.headers, self._read_body())
        except HttpError as err:
            if isinstance(err, Unhandled):
                hub.unhandled.append(f"{method} {self.path}")
            headers = {"Content-Type": "application/json", **err.headers, "X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            status, body = err.status, json.dumps({"error": err.message}).encode()
        except Exception:  # a bug in the fake: answer 500 and keep the traceback for the test to show
            hub.errors.append(f"{method} {self.path}\n{traceback.format_exc()}")
            status, body = 500, b'{"error": "internal error in fake hub"}'
            headers = {"Content-Type": "application/json"}
        self.send_response(status)
        for name, value in headers.items():  # header values must be latin-1 on the wire: escape, one line
            self.send_header(name, value.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " "))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815 - names the base class looks up


# --------------------------------------------------------------------------------------------- public API


class HubServer:
    """A fake Hugging Face Hub serving on ``127.0.0.1`` on a free port.

    Use it as a context manager (``with HubServer() as hub: ...``) or call :meth:`start`/:meth:`stop`. Repositories
    live in memory; :attr:`root` is a temporary directory for the clients' ``HF_HOME`` folders, removed on stop.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fake-hub-"))
        self._hub = Hub()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        """Bind to a free port on 127.0.0.1 and serve from a daemon thread. Returns ``self``."""
        if self._server is None:
            self._server = _HTTPServer(self._hub)
            self._hub.endpoint = self.endpoint
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="fake-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and remove :attr:`root`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
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

    def client_env(self, hf_home: str | os.PathLike[str], extra_env: Mapping[str, str | None] | None = None
                   ) -> dict[str, str]:
        """Environment for a client process talking to this server.

        Starts from ``os.environ`` without Hugging Face, offline and proxy variables, then sets ``HF_ENDPOINT``,
        ``HF_TOKEN`` (:data:`DEFAULT_TOKEN`), ``HF_HOME`` (cache and config), telemetry, progress bars and Xet off,
        offline mode off, and puts this ``tests`` directory first on ``PYTHONPATH``. ``extra_env`` is applied last;
        a ``None`` value removes the variable.
        """
        dropped = {"TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "PEFT_HOME",
                   "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in dropped}
        python_path = [str(Path(__file__).resolve().parent), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        env.update({
            "HF_ENDPOINT": self.endpoint, "HF_TOKEN": DEFAULT_TOKEN, "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)), "PYTHONUNBUFFERED": "1",
        })
        for key, value in (extra_env or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """Contents of every file of a repository's ``main``: path in repo -> bytes (with the ``.gitattributes`` that
        the server puts in every new repository)."""
        with self._hub.lock:
            repo = self._hub.repos[repo_id]
            return dict(sorted(repo.commits[repo.head].files.items()))

    def head(self, repo_id: str) -> str:
        """Commit id of the repository's ``main``."""
        with self._hub.lock:
            return self._hub.repos[repo_id].head

    def history(self, repo_id: str) -> list[str]:
        """Titles of the commits of ``main``, newest first (the last one is ``"initial commit"``)."""
        with self._hub.lock:
            repo, titles = self._hub.repos[repo_id], []
            commit: Commit | None = repo.commits[repo.head]
            while commit is not None:
                titles.append(commit.title)
                commit = repo.commits[commit.parent] if commit.parent else None
            return titles

    @property
    def errors(self) -> list[str]:
        """Tracebacks of requests that crashed inside the fake (answered 500); empty when all is well."""
        return list(self._hub.errors)

    @property
    def unhandled(self) -> list[str]:
        """``"METHOD /path"`` of requests the fake does not implement (answered 404)."""
        return list(self._hub.unhandled)


class HubClientError(AssertionError):
    """A client snippet run by :func:`run_with_hub` with ``check=True`` failed; carries its output."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"client exited with {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        self.proc = proc


def run_with_hub(code: str, hub: HubServer, extra_env: Mapping[str, str | None] | None = None, *,
                 timeout: float = 300.0, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet (dedented, ``sys.executable -c``) in a subprocess that talks to ``hub``.

    Its environment is :meth:`HubServer.client_env` with a fresh, empty ``HF_HOME`` under :attr:`HubServer.root`
    (so nothing is cached yet) and ``extra_env`` (``None`` values remove a variable). stdout and stderr are captured
    as text; after ``timeout`` seconds the subprocess is killed (``subprocess.TimeoutExpired``). With ``check``, a
    non-zero exit raises :class:`HubClientError` with the output.
    """
    env = hub.client_env(tempfile.mkdtemp(prefix="hf-home-", dir=hub.root), extra_env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HubClientError(proc)
    return proc
