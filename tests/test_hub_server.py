"""Tests of the fake Hugging Face Hub in ``hub_server.py``.

The fake covers what the product's Hub tests (``tests/test_hub.py``) use: creating a model repository, the
preupload and NDJSON commit calls that upload files inline, ``validate-yaml`` for model cards, and ``HEAD``/``GET``
on ``resolve`` URLs with the error codes ``huggingface_hub`` turns into its exceptions. Protocol details are
checked in-process with raw HTTP; the client libraries (``huggingface_hub``, ``peft``) run in subprocesses
through :func:`hub_server.run_with_hub`, because ``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hub_server import DEFAULT_TOKEN, DEFAULT_USER, HubClientError, HubServer, run_with_hub

CLIENT_TIMEOUT_S = 120

# The tiny models the client snippets build; seeded, so two processes build identical weights.
TINY_GPT2 = """
import os
import torch
from transformers import GPT2Config, GPT2LMHeadModel

def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()

INPUT_IDS = torch.tensor([[1, 5, 7, 42, 99, 3]])
"""


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A fresh fake hub per test; fails the test if the fake crashed or saw an unknown route."""
    with HubServer() as server:
        yield server
        assert server.errors == [], "\n".join(server.errors)
        assert server.unhandled == [], server.unhandled


def request(
    hub: HubServer,
    method: str,
    path: str,
    body: bytes | dict | list | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = DEFAULT_TOKEN,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request to the fake hub: (status, lower-cased headers, body)."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def ndjson_commit(summary: str, *items: dict) -> bytes:
    """The body of a commit request as ``huggingface_hub`` sends it."""
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}}, *items]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def add_file(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def run_ok(code: str, hub: HubServer, extra_env: dict[str, str | None] | None = None) -> str:
    """Run a client snippet, fail with its output if it fails; return its stdout."""
    proc = run_with_hub(code, hub, extra_env, timeout=CLIENT_TIMEOUT_S, check=True)
    return proc.stdout


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------------------------- server


def test_serves_on_loopback_and_stops_cleanly() -> None:
    server = HubServer().start()
    port, root = server.port, server.root
    assert server.endpoint == f"http://127.0.0.1:{port}"
    assert server._server is not None and server._server.server_address[0] == "127.0.0.1"
    # An open keep-alive connection must not keep the server alive after stop().
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", "/api/validate-yaml", body=b"{}", headers={"Content-Type": "application/json"})
    assert json.loads(conn.getresponse().read()) == {"errors": [], "warnings": []}
    server.stop()
    assert not root.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    conn.close()


def test_raw_protocol_repos_commits_and_downloads(hub: HubServer) -> None:
    # Create: 200 with the repo URL, then 409 (what `exist_ok=True` relies on); writes need a valid token.
    payload = {"name": "raw", "organization": "org", "type": "model"}
    status, _, body = request(hub, "POST", "/api/repos/create", payload)
    assert status == 200 and json.loads(body)["url"] == f"{hub.endpoint}/org/raw"
    assert request(hub, "POST", "/api/repos/create", payload)[0] == 409
    assert request(hub, "POST", "/api/repos/create", {"name": "x"}, token=None)[0] == 401
    status, headers, _ = request(hub, "POST", "/api/repos/create", {"name": "x"}, token="hf_wrong")
    assert status == 401 and headers["x-error-message"] == "Invalid credentials in Authorization header"
    assert hub.repo_files("org/raw") == {".gitattributes": hub.repo_files("org/raw")[".gitattributes"]}
    # Without an organization the repo lands in the user's namespace; private repos are not implemented.
    assert json.loads(request(hub, "POST", "/api/repos/create", {"name": "bare"})[2])["name"] == f"{DEFAULT_USER}/bare"
    assert request(hub, "POST", "/api/repos/create", {"name": "secret", "private": True})[0] == 400

    # Preupload: every file is "regular"; an existing file comes with its git blob id.
    data = bytes(range(256)) * 3
    status, _, body = request(hub, "POST", "/api/models/org/raw/preupload/main",
                              {"files": [{"path": "w.bin", "sample": "", "size": len(data)}]})
    assert status == 200 and json.loads(body)["files"] == [
        {"path": "w.bin", "uploadMode": "regular", "shouldIgnore": False, "oid": None}
    ]

    # Commit (NDJSON, base64 content).
    first_head = hub.head("org/raw")
    status, _, body = request(hub, "POST", "/api/models/org/raw/commit/main",
                              ndjson_commit("add", add_file("w.bin", data), add_file("d/x.txt", b"x")),
                              headers={"Content-Type": "application/x-ndjson"})
    commit = json.loads(body)
    assert status == 200 and commit["commitOid"] == hub.head("org/raw") != first_head
    assert commit["commitUrl"] == f"{hub.endpoint}/org/raw/commit/{commit['commitOid']}"
    assert hub.repo_files("org/raw")["w.bin"] == data
    _, _, body = request(hub, "POST", "/api/models/org/raw/preupload/main",
                         {"files": [{"path": "w.bin", "sample": "", "size": len(data)}]})
    assert json.loads(body)["files"][0]["oid"] == git_blob_id(data)

    # A commit without a token is refused.
    late = ndjson_commit("late", add_file("y.txt", b"y"))
    assert request(hub, "POST", "/api/models/org/raw/commit/main", late, token=None)[0] == 401

    # HEAD on resolve: the metadata huggingface_hub needs, and no body.
    status, headers, body = request(hub, "HEAD", "/org/raw/resolve/main/w.bin", token=None)
    assert status == 200 and body == b""
    assert headers["x-repo-commit"] == commit["commitOid"]
    assert headers["etag"] == f'"{git_blob_id(data)}"'
    assert headers["content-length"] == str(len(data))
    assert "x-linked-etag" not in headers and "x-xet-hash" not in headers

    # GET, by branch and by commit id (the X-Repo-Commit a client may pin to).
    assert request(hub, "GET", "/org/raw/resolve/main/w.bin")[2] == data
    assert request(hub, "GET", f"/org/raw/resolve/{commit['commitOid']}/d/x.txt")[2] == b"x"

    # Errors carry the X-Error-Code that huggingface_hub maps to its exceptions.
    status, headers, _ = request(hub, "HEAD", "/org/raw/resolve/main/missing.txt")
    assert (status, headers["x-error-code"], headers["x-repo-commit"]) == (404, "EntryNotFound", commit["commitOid"])
    status, headers, _ = request(hub, "GET", "/org/raw/resolve/nobranch/w.bin")
    assert (status, headers["x-error-code"]) == (404, "RevisionNotFound")
    status, headers, _ = request(hub, "HEAD", "/org/nothing/resolve/main/w.bin")
    assert (status, headers["x-error-code"]) == (404, "RepoNotFound")

    # Malformed requests are refused with 400 (the fixture also checks the fake did not crash).
    commit_url = "/api/models/org/raw/commit/main"
    no_header = json.dumps(add_file("a.txt", b"a")).encode() + b"\n"
    escaping = ndjson_commit("bad path", add_file("../outside.txt", b"x"))
    assert request(hub, "POST", "/api/models/org/raw/preupload/main", [1, 2])[0] == 400
    assert request(hub, "POST", commit_url, b"not json\n")[0] == 400
    assert request(hub, "POST", commit_url, no_header)[0] == 400
    assert request(hub, "POST", commit_url, escaping)[0] == 400
    assert sorted(hub.repo_files("org/raw")) == [".gitattributes", "d/x.txt", "w.bin"]


def test_requests_the_fake_does_not_implement_are_recorded() -> None:
    with HubServer() as hub:
        request(hub, "POST", "/api/repos/create", {"name": "r"})
        assert request(hub, "GET", "/api/models/test-user/r")[0] == 404  # repo info
        assert request(hub, "GET", "/api/models/test-user/r/tree/main?recursive=true")[0] == 404
        assert request(hub, "GET", "/test-user/r/resolve/main/.gitattributes", headers={"Range": "bytes=1-"})[0] == 404
        assert request(hub, "DELETE", "/api/repos/delete", {"name": "r"})[0] == 404
        assert hub.unhandled == [
            "GET /api/models/test-user/r", "GET /api/models/test-user/r/tree/main?recursive=true",
            "GET /test-user/r/resolve/main/.gitattributes", "DELETE /api/repos/delete",
        ]
        assert hub.errors == []


def test_run_with_hub_reports_failures(hub: HubServer) -> None:
    with pytest.raises(HubClientError, match="boom"):
        run_with_hub("import sys; print('boom', file=sys.stderr); sys.exit(3)", hub, check=True)
    proc = run_with_hub("import os; print(os.environ['HF_ENDPOINT'], os.environ['HF_TOKEN'])", hub)
    assert proc.returncode == 0 and proc.stdout.split() == [hub.endpoint, DEFAULT_TOKEN]


# --------------------------------------------------------------------------------------------- huggingface_hub


def test_huggingface_hub_client_round_trip(hub: HubServer) -> None:
    out = run_ok(
        f"""
        import json, pathlib
        from huggingface_hub import HfApi, create_repo, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

        def error(call):
            try:
                call()
                return "none"
            except EntryNotFoundError:
                return "entry"
            except RepositoryNotFoundError:
                return "repo"

        repo = "{DEFAULT_USER}/round-trip"
        url = create_repo(repo, exist_ok=True)
        assert create_repo(repo, exist_ok=True).repo_id == repo   # 409 from the server, accepted by exist_ok
        api = HfApi()
        api.upload_file(path_or_fileobj=b"abc", path_in_repo="sub/a b.txt", repo_id=repo, commit_message="add")
        print(json.dumps({{
            "url": url,
            "download": pathlib.Path(hf_hub_download(repo, "sub/a b.txt")).read_text(),
            "missing_file": error(lambda: hf_hub_download(repo, "missing.txt")),
            "missing_repo": error(lambda: hf_hub_download("{DEFAULT_USER}/nothing", "a.txt")),
        }}))
        """,
        hub,
    )
    repo = f"{DEFAULT_USER}/round-trip"
    assert last_json_line(out) == {
        "url": f"{hub.endpoint}/{repo}", "download": "abc", "missing_file": "entry", "missing_repo": "repo"
    }
    assert hub.repo_files(repo)["sub/a b.txt"] == b"abc"
    assert hub.history(repo) == ["add", "initial commit"]


# --------------------------------------------------------------------------------------------- peft


def test_peft_adapter_push_to_hub_and_from_pretrained(hub: HubServer, tmp_path: Path) -> None:
    env = {"OUT": str(tmp_path)}
    run_ok(
        TINY_GPT2
        + """
import os
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
out = os.environ["OUT"]
model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False))
model.push_to_hub("test-user/tiny-lora")
model.save_pretrained(os.path.join(out, "local"))
torch.save({k: v.clone() for k, v in get_peft_model_state_dict(model).items()}, os.path.join(out, "adapter.pt"))
with torch.no_grad():
    torch.save(model(INPUT_IDS).logits, os.path.join(out, "logits.pt"))
""",
        hub,
        env,
    )
    # What was pushed is byte-for-byte what save_pretrained writes.
    on_hub = hub.repo_files("test-user/tiny-lora")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert on_hub[name] == (tmp_path / "local" / name).read_bytes(), name
    assert "README.md" in on_hub

    out = run_ok(  # fresh process, empty cache: base rebuilt from the seed, adapter from the server
        TINY_GPT2
        + """
import os, json
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
out = os.environ["OUT"]
config = PeftConfig.from_pretrained("test-user/tiny-lora")
model = PeftModel.from_pretrained(tiny_gpt2(), "test-user/tiny-lora")
expected = torch.load(os.path.join(out, "adapter.pt"))
loaded = get_peft_model_state_dict(model)
with torch.no_grad():
    logits = model(INPUT_IDS).logits
print(json.dumps({
    "type": config.peft_type.value, "r": config.r, "targets": sorted(config.target_modules),
    "keys_match": sorted(loaded) == sorted(expected),
    "tensors_equal": all(torch.equal(loaded[k], expected[k]) for k in expected),
    "logits_equal": torch.equal(logits, torch.load(os.path.join(out, "logits.pt"))),
}))
""",
        hub,
        env,
    )
    result = last_json_line(out)
    assert result == {
        "type": "LORA", "r": 4, "targets": ["c_attn"],
        "keys_match": True, "tensors_equal": True, "logits_equal": True,
    }

    # And the pushed safetensors file holds exactly the adapter tensors.
    from safetensors.torch import load as load_safetensors

    pushed = load_safetensors(on_hub["adapter_model.safetensors"])
    expected = torch.load(tmp_path / "adapter.pt")
    assert pushed.keys() == expected.keys()
    assert all(torch.equal(pushed[k], expected[k]) for k in expected)
