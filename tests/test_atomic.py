"""Atomic saves: a kill at any moment leaves the old or the new content, never a mix."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gradiend_peft.atomic import _exchange, atomic_directory, atomic_write_json, atomic_write_text


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
        with atomic_directory(str(tmp_path / "adapter")) as folder:
            atomic_write_text(os.path.join(folder, "a.txt"), "x")
        os.mkdir(tmp_path / "plain_dir")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "new.txt") == mode(plain) == 0o640
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain_dir") == 0o750
    os.chmod(tmp_path / "new.txt", 0o600)
    atomic_write_text(str(tmp_path / "new.txt"), "y")  # a replaced file keeps its permissions
    assert mode(tmp_path / "new.txt") == 0o600


def test_failed_directory_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(target)) as folder:
            atomic_write_text(os.path.join(folder, "a.txt"), "new")
            raise RuntimeError("crash while saving")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_directory_swap_replaces_all_files(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "old")
        atomic_write_text(os.path.join(folder, "stale.txt"), "old")
    with atomic_directory(str(target)) as folder:
        atomic_write_text(os.path.join(folder, "a.txt"), "new")
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert (target / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


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
        from gradiend_peft.atomic import atomic_directory, atomic_write_text
        i = 0
        while True:
            with atomic_directory({str(target)!r}) as folder:
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
    contents = {(target / name).read_text() for name in ("config.json", "weights.bin", "README.md")}
    assert len(contents) == 1  # the three files come from the same save
