"""Atomic saves: a kill at any moment leaves the old or the new content, never a mix."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gradiend_peft.atomic import (
    _exchange,
    atomic_directory,
    atomic_files,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
)


def test_atomic_write_replaces_content(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(str(path), {"a": 1})
    atomic_write_json(str(path), {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_saved_files_and_folders_get_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under this umask
        atomic_write_text(str(tmp_path / "new.txt"), "x")
        with atomic_files(str(tmp_path / "adapter")) as folder:
            os.mkdir(os.path.join(folder, "sub"))
            atomic_write_text(os.path.join(folder, "sub", "a.txt"), "x")
        os.mkdir(tmp_path / "plain_dir")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "new.txt") == mode(plain) == 0o640
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain_dir") == 0o750
    assert mode(tmp_path / "adapter" / "sub") == 0o750
    assert mode(tmp_path / "adapter" / "sub" / "a.txt") == 0o640
    os.chmod(tmp_path / "new.txt", 0o600)
    atomic_write_text(str(tmp_path / "new.txt"), "y")  # a replaced file keeps its permissions
    assert mode(tmp_path / "new.txt") == 0o600


def test_failed_save_keeps_the_old_files(tmp_path):
    target = tmp_path / "adapter"
    with atomic_files(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
    with pytest.raises(RuntimeError):
        with atomic_files(str(target)) as folder:
            atomic_write_text(os.path.join(folder, "a.txt"), "new")
            raise RuntimeError("crash while saving")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(os.listdir(target)) == ["a.txt"]  # no staging folder or journal left behind


def test_a_save_replaces_only_the_files_it_writes(tmp_path):
    target = tmp_path / "project"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "sub").mkdir()
    (target / "sub" / "data.csv").write_text("1,2")
    with atomic_files(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
        atomic_write_text(os.path.join(folder, "stale.txt"), "old")
    with atomic_files(str(target)) as folder:
        os.makedirs(os.path.join(folder, "sub"))
        atomic_write_text(os.path.join(folder, "a.txt"), "new")
        atomic_write_text(os.path.join(folder, "sub", "b.txt"), "new")
    assert (target / "a.txt").read_text() == "new"
    assert (target / "stale.txt").read_text() == "old"  # ours from before, not written again: left as it was
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "sub" / "data.csv").read_text() == "1,2"
    assert (target / "sub" / "b.txt").read_text() == "new"
    assert sorted(os.listdir(target)) == ["a.txt", "notes.txt", "stale.txt", "sub"]


def test_an_interrupted_commit_is_rolled_forward(tmp_path):
    """A crash between two moves of a commit: the journal lets the next reader finish it."""
    import json

    target = tmp_path / "adapter"
    with atomic_files(str(target)) as folder:
        for name in ("config.json", "weights.bin"):
            atomic_write_text(os.path.join(folder, name), "old")
    staging = target / ".gradiend-staging-crashed"
    staging.mkdir()
    (staging / "weights.bin").write_text("new")  # config.json was already moved when the crash came
    (target / "config.json").write_text("new")
    journal = {"staging": staging.name, "files": ["config.json", "weights.bin"]}
    (target / f".gradiend-commit-{staging.name}.json").write_text(json.dumps(journal))
    recover_directory(str(target))
    assert (target / "config.json").read_text() == (target / "weights.bin").read_text() == "new"
    assert sorted(os.listdir(target)) == ["config.json", "weights.bin"]


def test_a_journal_cannot_move_files_outside_the_folder(tmp_path):
    import json

    target = tmp_path / "adapter"
    target.mkdir()
    (tmp_path / "victim.txt").write_text("keep")
    staging = target / ".gradiend-staging-x"
    staging.mkdir()
    (staging / "evil").write_text("x")
    journal_path = target / ".gradiend-commit-x.json"
    journal_path.write_text(json.dumps({"staging": staging.name, "files": ["../victim.txt"]}))
    recover_directory(str(target))
    assert (tmp_path / "victim.txt").read_text() == "keep"
    assert journal_path.exists()  # not ours to act on: left for a person to look at


def test_owned_directory_swap_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "cache-entry"
    with atomic_directory(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
        atomic_write_text(os.path.join(folder, "stale.txt"), "old")
    with atomic_directory(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "new")
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert (target / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["cache-entry"]


def test_linux_offers_the_atomic_exchange(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux-only; other systems use the rename-aside fallback")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    assert _exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "x").read_text() == "a"


def test_sigkill_during_repeated_saves_leaves_a_complete_folder(tmp_path):
    target = tmp_path / "adapter"
    script = textwrap.dedent(f"""
        import os
        from gradiend_peft.atomic import atomic_files, atomic_write_text
        i = 0
        while True:
            with atomic_files({str(target)!r}) as folder:
                for name in ("config.json", "weights.bin", "README.md"):
                    atomic_write_text(os.path.join(folder, name), str(i) * 20000)
            i += 1
            if i == 5:
                print("ready", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGKILL)
    process.wait()
    recover_directory(str(target))  # what every save and load_gradiend_model do first
    contents = {(target / name).read_text() for name in ("config.json", "weights.bin", "README.md")}
    assert len(contents) == 1  # the three files come from the same save


def test_a_commit_deletes_the_superseded_files_it_is_told_of_and_nothing_else(tmp_path):
    import re

    target = tmp_path / "adapter"
    target.mkdir()
    for name in ("adapter_model.safetensors", "adapter_model-00002-of-00003.safetensors", "notes.txt"):
        (target / name).write_text("old")
    with atomic_files(str(target), remove_matching=re.compile(r"adapter_model(-\d{5}-of-\d{5})?\.safetensors")) as folder:
        atomic_write_text(os.path.join(folder, "adapter_model-00001-of-00001.safetensors"), "new")
    assert sorted(os.listdir(target)) == ["adapter_model-00001-of-00001.safetensors", "notes.txt"]


def test_an_interrupted_commit_also_finishes_its_deletions(tmp_path):
    import json

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    staging = target / ".gradiend-staging-crashed"
    staging.mkdir()
    (staging / "new.bin").write_text("new")
    journal = {"staging": staging.name, "files": ["new.bin"], "remove": ["old.bin"]}
    (target / f".gradiend-commit-{staging.name}.json").write_text(json.dumps(journal))
    recover_directory(str(target))
    assert sorted(os.listdir(target)) == ["new.bin"]


def test_a_journal_cannot_delete_files_outside_the_folder(tmp_path):
    import json

    target = tmp_path / "adapter"
    target.mkdir()
    (tmp_path / "victim.txt").write_text("keep")
    staging = target / ".gradiend-staging-x"
    staging.mkdir()
    journal_path = target / ".gradiend-commit-x.json"
    journal_path.write_text(json.dumps({"staging": staging.name, "files": [], "remove": ["../victim.txt"]}))
    recover_directory(str(target))
    assert (tmp_path / "victim.txt").read_text() == "keep" and journal_path.exists()
