"""Tests of the fake Hugging Face Hub in ``hub_server.py``.

Protocol details are checked in-process with raw HTTP; the client libraries (``huggingface_hub``,
``transformers``, ``peft``) run in subprocesses through :func:`hub_server.run_with_hub`, because
``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported.
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


def ndjson_commit(summary: str, *items: dict, parent: str | None = None) -> bytes:
    """The body of a commit request as ``huggingface_hub`` sends it."""
    header: dict = {"summary": summary, "description": ""}
    if parent is not None:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header}, *items]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def add_file(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def run_ok(code: str, hub: HubServer, extra_env: dict[str, str | None] | None = None) -> str:
    """Run a client snippet, fail with its output if it fails; return its stdout."""
    proc = run_with_hub(code, hub, extra_env, timeout=CLIENT_TIMEOUT_S, check=True)
    return proc.stdout


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def xet_or_lfs_requests(hub: HubServer) -> list[str]:
    """Requests to Xet token endpoints or to the git-LFS batch API (none expected on the plain path)."""
    return [r.path for r in hub.requests if "/xet-" in r.path or "/info/lfs/" in r.path]


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
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    assert json.loads(conn.getresponse().read())["name"] == DEFAULT_USER
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
    assert [c.title for c in hub.history("org/raw")] == ["add", "initial commit"]
    _, _, body = request(hub, "POST", "/api/models/org/raw/preupload/main",
                         {"files": [{"path": "w.bin", "sample": "", "size": len(data)}]})
    assert json.loads(body)["files"][0]["oid"] == git_blob_id(data)

    # A stale parentCommit is refused; a commit without a token too.
    stale = ndjson_commit("late", add_file("y.txt", b"y"), parent=first_head)
    assert request(hub, "POST", "/api/models/org/raw/commit/main", stale)[0] == 412
    assert request(hub, "POST", "/api/models/org/raw/commit/main", stale, token=None)[0] == 401

    # HEAD on resolve: the metadata huggingface_hub needs, and no body.
    status, headers, body = request(hub, "HEAD", "/org/raw/resolve/main/w.bin", token=None)
    assert status == 200 and body == b""
    assert headers["x-repo-commit"] == commit["commitOid"]
    assert headers["etag"] == f'"{git_blob_id(data)}"'
    assert headers["content-length"] == str(len(data))
    assert "x-linked-etag" not in headers and "x-xet-hash" not in headers

    # GET, by branch and by commit id, whole and by range.
    assert request(hub, "GET", "/org/raw/resolve/main/w.bin")[2] == data
    assert request(hub, "GET", f"/org/raw/resolve/{commit['commitOid']}/d/x.txt")[2] == b"x"
    status, headers, body = request(hub, "GET", "/org/raw/resolve/main/w.bin", headers={"Range": "bytes=10-"})
    assert status == 206 and body == data[10:] and headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert request(hub, "GET", "/org/raw/resolve/main/w.bin", headers={"Range": "bytes=-4"})[2] == data[-4:]

    # Errors carry the X-Error-Code that huggingface_hub maps to its exceptions.
    status, headers, _ = request(hub, "HEAD", "/org/raw/resolve/main/missing.txt")
    assert (status, headers["x-error-code"], headers["x-repo-commit"]) == (404, "EntryNotFound", commit["commitOid"])
    status, headers, _ = request(hub, "GET", "/org/raw/resolve/nobranch/w.bin")
    assert (status, headers["x-error-code"]) == (404, "RevisionNotFound")
    status, headers, _ = request(hub, "GET", "/api/models/org/nothing")
    assert (status, headers["x-error-code"]) == (404, "RepoNotFound")

    # Tree listing: recursive or not, folders included.
    _, _, body = request(hub, "GET", "/api/models/org/raw/tree/main")
    assert [(e["type"], e["path"]) for e in json.loads(body)] == [
        ("directory", "d"), ("file", ".gitattributes"), ("file", "w.bin")
    ]
    _, _, body = request(hub, "GET", "/api/models/org/raw/tree/main?recursive=true")
    assert sorted(e["path"] for e in json.loads(body) if e["type"] == "file") == [".gitattributes", "d/x.txt", "w.bin"]

    # Malformed requests are refused with 400 (the fixture also checks the fake did not crash).
    commit_url = "/api/models/org/raw/commit/main"
    no_header = json.dumps(add_file("a.txt", b"a")).encode() + b"\n"
    escaping = ndjson_commit("bad path", add_file("../outside.txt", b"x"))
    assert request(hub, "POST", "/api/models/org/raw/preupload/main", [1, 2])[0] == 400
    assert request(hub, "POST", commit_url, b"not json\n")[0] == 400
    assert request(hub, "POST", commit_url, no_header)[0] == 400
    assert request(hub, "POST", commit_url, escaping)[0] == 400

    # Deletions.
    request(hub, "POST", "/api/models/org/raw/commit/main",
            ndjson_commit("rm", {"key": "deletedFolder", "value": {"path": "d/"}}))
    assert sorted(hub.repo_files("org/raw")) == [".gitattributes", "w.bin"]


def test_server_side_seeding_and_private_repos(hub: HubServer) -> None:
    head = hub.create_repo("seed/secret", {"a.txt": b"A"}, private=True)
    assert hub.is_private("seed/secret") and hub.head("seed/secret") == head
    status, headers, _ = request(hub, "GET", "/seed/secret/resolve/main/a.txt", token=None)
    assert (status, headers["x-error-code"]) == (401, "RepoNotFound")
    assert request(hub, "GET", "/seed/secret/resolve/main/a.txt")[2] == b"A"


def test_run_with_hub_reports_failures(hub: HubServer) -> None:
    with pytest.raises(HubClientError, match="boom"):
        run_with_hub("import sys; print('boom', file=sys.stderr); sys.exit(3)", hub, check=True)
    proc = run_with_hub("import os; print(os.environ['HF_ENDPOINT'], os.environ['HF_TOKEN'])", hub)
    assert proc.returncode == 0 and proc.stdout.split() == [hub.endpoint, DEFAULT_TOKEN]


# --------------------------------------------------------------------------------------------- huggingface_hub


def test_huggingface_hub_api_round_trip(hub: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    local = {"config.json": b'{"a": 1}\n', "weights.bin": bytes(range(256)) * 40, "sub/notes.txt": "é\n".encode()}
    for name, data in local.items():
        (folder / name).write_bytes(data)

    out = run_ok(
        f"""
        import json, pathlib
        from huggingface_hub import HfApi, create_repo, hf_hub_download, snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, EntryNotFoundError

        repo = "{DEFAULT_USER}/round-trip"
        url = create_repo(repo, exist_ok=True)
        assert create_repo(repo, exist_ok=True).repo_id == repo
        bare = create_repo("bare-name", private=True)   # bare names land in the user's namespace
        api = HfApi()
        api.upload_folder(folder_path={str(folder)!r}, repo_id=repo, commit_message="folder")
        api.upload_file(path_or_fileobj=b"extra", path_in_repo="extra/e.txt", repo_id=repo)
        api.upload_folder(folder_path={str(folder)!r}, repo_id=repo)   # nothing changed: no new commit
        info = api.model_info(repo)
        snapshot = pathlib.Path(snapshot_download(repo))
        api.create_branch(repo, branch="dev")
        api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo, revision="dev")
        pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id=repo, create_pr=True)
        try:
            HfApi(token=False).model_info(bare.repo_id)
            anonymous_private = "visible"
        except RepositoryNotFoundError:
            anonymous_private = "not found"
        try:
            hf_hub_download(repo, "missing.txt")
            missing = "found"
        except EntryNotFoundError:
            missing = "not found"
        print(json.dumps({{
            "url": url, "bare": bare.repo_id, "sha": info.sha, "private": api.model_info(bare.repo_id).private,
            "siblings": sorted(s.rfilename for s in info.siblings),
            "files": api.list_repo_files(repo),
            "exists": [api.file_exists(repo, "sub/notes.txt"), api.file_exists(repo, "nope.txt")],
            "download": pathlib.Path(hf_hub_download(repo, "weights.bin")).read_bytes().hex(),
            "snapshot": {{p.relative_to(snapshot).as_posix(): p.read_bytes().hex()
                          for p in snapshot.rglob("*") if p.is_file()}},
            "dev": pathlib.Path(hf_hub_download(repo, "dev.txt", revision="dev")).read_text(),
            "dev_on_main": api.file_exists(repo, "dev.txt"),
            "pr_ref": pr.pr_revision, "anonymous_private": anonymous_private, "missing": missing,
        }}))
        api.update_repo_settings(bare.repo_id, private=False)
        assert HfApi(token=False).model_info(bare.repo_id).private is False
        api.delete_repo(bare.repo_id)
        assert not api.repo_exists(bare.repo_id)
        """,
        hub,
    )
    result = last_json_line(out)
    repo = f"{DEFAULT_USER}/round-trip"
    assert result["url"] == f"{hub.endpoint}/{repo}"
    assert result["bare"] == f"{DEFAULT_USER}/bare-name" and result["private"] is True
    assert not hub.repo_exists(f"{DEFAULT_USER}/bare-name")  # deleted at the end of the snippet
    assert result["anonymous_private"] == "not found" and result["missing"] == "not found"

    expected = {**local, "extra/e.txt": b"extra"}
    on_hub = hub.repo_files(repo)
    assert {k: v for k, v in on_hub.items() if k != ".gitattributes"} == expected
    titles = [c.title for c in hub.history(repo)]
    assert titles == ["Upload extra/e.txt with huggingface_hub", "folder", "initial commit"]  # no empty commit
    assert result["sha"] == hub.head(repo)
    assert result["siblings"] == sorted(on_hub) and sorted(result["files"]) == sorted(on_hub)
    assert result["exists"] == [True, False]
    assert bytes.fromhex(result["download"]) == local["weights.bin"]
    assert {k: bytes.fromhex(v) for k, v in result["snapshot"].items()} == on_hub
    assert result["dev"] == "dev only" and result["dev_on_main"] is False
    assert hub.repo_files(repo, "dev")["dev.txt"] == b"dev only"
    assert result["pr_ref"] == "refs/pr/1" and hub.repo_files(repo, "refs/pr/1")["pr.txt"] == b"pr"
    assert "pr.txt" not in hub.repo_files(repo)
    assert xet_or_lfs_requests(hub) == []


def test_xet_enabled_client_still_uploads_inline(hub: HubServer, tmp_path: Path) -> None:
    """With hf_xet importable and allowed, upload_folder takes its pipelined path; it must still work."""
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "model.safetensors").write_bytes(b"\x00\x01" * 5000)
    out = run_ok(
        f"""
        import pathlib
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo("pipe/enabled")
        api.upload_folder(folder_path={str(tmp_path / "f")!r}, repo_id="pipe/enabled")
        print(pathlib.Path(hf_hub_download("pipe/enabled", "model.safetensors")).read_bytes() == b"\\x00\\x01" * 5000)
        """,
        hub,
        {"HF_HUB_DISABLE_XET": None},
    )
    assert out.split()[-1] == "True"
    assert hub.repo_files("pipe/enabled")["model.safetensors"] == b"\x00\x01" * 5000
    assert xet_or_lfs_requests(hub) == []


def test_optional_lfs_uploads(tmp_path: Path) -> None:
    big, small = bytes(range(256)) * 8, b"small"
    with HubServer(lfs_threshold=1024) as hub:
        out = run_ok(
            """
            import pathlib
            from huggingface_hub import HfApi, hf_hub_download
            api = HfApi()
            api.create_repo("lfs/repo")
            api.upload_file(path_or_fileobj=bytes(range(256)) * 8, path_in_repo="big.bin", repo_id="lfs/repo")
            api.upload_file(path_or_fileobj=b"small", path_in_repo="small.txt", repo_id="lfs/repo")
            tree = {f.path: f.lfs is not None for f in api.list_repo_tree("lfs/repo")}
            data = pathlib.Path(hf_hub_download("lfs/repo", "big.bin")).read_bytes()
            print(tree["big.bin"], tree["small.txt"], data == bytes(range(256)) * 8)
            """,
            hub,
        )
        assert out.split()[-3:] == ["True", "False", "True"]
        stored = hub.stored_files("lfs/repo")
        assert stored["big.bin"].lfs and not stored["small.txt"].lfs
        assert hub.repo_files("lfs/repo")["big.bin"] == big and hub.repo_files("lfs/repo")["small.txt"] == small
        assert any(r.path == "/lfs/repo.git/info/lfs/objects/batch" for r in hub.requests)
        _, headers, _ = request(hub, "HEAD", "/lfs/repo/resolve/main/big.bin")
        sha256 = hashlib.sha256(big).hexdigest()
        assert headers["x-linked-etag"] == f'"{sha256}"' and headers["x-linked-size"] == str(len(big))
        assert hub.errors == [] and hub.unhandled == []


# --------------------------------------------------------------------------------------------- transformers / peft


def test_transformers_push_to_hub_and_from_pretrained(hub: HubServer) -> None:
    # One process: pushing does not fill the download cache, so from_pretrained fetches everything back
    # from the server (the PEFT test below also covers loading in a separate, fresh process).
    out = run_ok(
        TINY_GPT2
        + """
from transformers import AutoModelForCausalLM
model = tiny_gpt2()
model.push_to_hub("test-user/tiny-gpt2", private=True)
loaded = AutoModelForCausalLM.from_pretrained("test-user/tiny-gpt2")
expected, got = model.state_dict(), loaded.state_dict()
assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
print(type(loaded).__name__, all(torch.equal(got[k], expected[k]) for k in expected))
""",
        hub,
    )
    assert out.split()[-2:] == ["GPT2LMHeadModel", "True"]
    assert hub.is_private("test-user/tiny-gpt2")
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.repo_files("test-user/tiny-gpt2"))
    downloads = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert {"config.json", "model.safetensors"} <= downloads


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
