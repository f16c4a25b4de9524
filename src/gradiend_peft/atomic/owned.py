"""Replacing a whole folder that the library owns (a conversion cache entry) in one step."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from typing import Iterator

from .files import _default_mode, _fsync_directory

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

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


def recover_owned_directory(path: str) -> None:
    """Puts back a folder left aside by an interrupted non-Linux `atomic_directory` swap."""
    aside = _aside_name(path)
    if not os.path.exists(path) and os.path.isdir(aside):
        os.rename(aside, path)


def _fsync_tree(folder: str) -> None:
    """Flushes every file below ``folder`` and the folders themselves to disk."""
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError), open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(root)


def replace_directory(source: str, destination: str) -> None:
    """Moves the finished folder ``source`` to ``destination`` in one step, replacing what was there (the whole
    folder: only for folders the library owns). ``source`` must be on the same filesystem, e.g. beside it. Its files
    are flushed to disk first, so that a crash after the move cannot leave empty files behind."""
    source, destination = os.path.abspath(source), os.path.abspath(destination)
    _fsync_tree(source)
    recover_owned_directory(destination)
    if not os.path.exists(destination):
        os.rename(source, destination)
    elif _exchange(source, destination):
        shutil.rmtree(source, ignore_errors=True)  # source now holds the old folder
    else:
        aside = _aside_name(destination)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(destination, aside)
        os.rename(source, destination)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_directory(os.path.dirname(destination))


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yields a fresh temporary folder; on success it replaces the WHOLE folder ``path`` in one step
    (`replace_directory`).

    Only for folders the library owns entirely (a conversion cache entry): everything in the old folder goes. Saves
    into a user's folder use `atomic_files`, which leaves other files alone.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    recover_owned_directory(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes it 0o700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, path)
