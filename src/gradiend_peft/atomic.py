"""Atomic writes: a kill at any moment leaves either the old file (or folder) or the new one, never a mix.

Files are written beside their destination and moved into place with ``os.replace``. Folders (an adapter is a
config, weights and a card) are written beside their destination and swapped in with one ``renameat2`` exchange
on Linux; elsewhere the old folder is first renamed aside, and `recover_directory` puts it back if a crash hit
between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_directory(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _default_mode(full: int) -> int:
    """``full`` (0o666 for files, 0o777 for folders) less the process umask, as ``open``/``mkdir`` would give."""
    umask = os.umask(0o022)
    os.umask(umask)
    return full & ~umask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically.

    The new file keeps the permissions of the file it replaces, or gets the usual ones (0o666 less the umask);
    `tempfile.mkstemp` alone would leave it readable by its owner only.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = _default_mode(0o666)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(folder)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically with renameat2(RENAME_EXCHANGE); False where the OS does not offer it."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _aside_name(path: str) -> str:
    return f"{path}.previous"


def recover_directory(path: str) -> None:
    """Puts back a folder left aside by an interrupted non-Linux swap (nothing to do otherwise)."""
    aside = _aside_name(path)
    if not os.path.exists(path) and os.path.isdir(aside):
        os.rename(aside, path)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yields a fresh temporary folder; on success it replaces ``path`` in one step, on error it is removed.

    Examples:
        ```python
        with atomic_directory("adapter") as folder:
            model.save_pretrained(folder)
        ```
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    recover_directory(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes it 0o700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.exists(path):
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
    else:
        aside = _aside_name(path)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        os.rename(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_directory(parent)


def save_adapter(model: Any, directory: str, **kwargs: Any) -> str:
    """``model.save_pretrained(directory)`` made atomic, plus the GRADIEND model card; returns ``directory``."""
    from .hub import write_model_card

    with atomic_directory(directory) as folder:
        model.save_pretrained(folder, **kwargs)
        if hasattr(model, "peft_config"):
            write_model_card(model, folder)
    return directory
