"""Atomic writes: a kill at any moment leaves the old content or the new one, never a mix, and nothing we did not
write is touched.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: one file, written beside its destination and moved
  into place with ``os.replace``.
- `atomic_files`: a set of files saved into a folder the user owns (an adapter: config, weights, card). The files are
  staged in a hidden folder inside the destination, then moved into place one by one under a journal: a crash
  between two moves is rolled forward by `recover_directory` (called by every save and by `load_gradiend_model`), so
  readers that recover see the whole old set or the whole new set. Files of the destination that the save does not
  write are left alone, except files of our own that the new set replaces under another name (``remove_matching``:
  e.g. the shards of a sharded adapter after a single-file save), which the journal deletes after the moves.
  Concurrent commits to one folder are serialised with an advisory lock on the folder. `begin_staging`,
  `commit_staging` and `abort_staging` are the same protocol in three calls, for saves whose files several
  processes write (a module-sharded adapter).
- `atomic_directory`: replaces a whole folder that the library owns (a conversion cache entry) in one step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Iterator, Optional, Pattern

try:  # advisory locks: POSIX only; elsewhere commits are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_STAGING_PREFIX = ".gradiend-staging-"
_JOURNAL_PREFIX = ".gradiend-commit-"
_STALE_STAGING_SECONDS = 24 * 3600


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


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities become ``None``, recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically (NaN and infinities as ``null``)."""
    atomic_write_text(path, json.dumps(json_safe(payload), indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------------------- a set of files
@contextlib.contextmanager
def _folder_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself (no lock file is left behind)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def staged_files(staging: str) -> list[str]:
    """The files below ``staging``, as paths relative to it, sorted."""
    files = []
    for root, _, names in os.walk(staging):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), staging))
    return sorted(files)


def _safe_relative(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and not os.path.isabs(name)
            and ".." not in name.replace("\\", "/").split("/"))


def _roll_forward(path: str, journal_path: str) -> None:
    """Completes a commit: moves the journal's staged files into place, deletes the files it lists under ``remove``,
    then removes the journal and the staging."""
    try:
        with open(journal_path, encoding="utf-8") as handle:
            journal = json.load(handle)
        staging_name, files = journal["staging"], list(journal["files"])
        remove = list(journal.get("remove", []))
    except (OSError, ValueError, KeyError, TypeError):
        # a journal is written atomically, so an unreadable one is not ours: leave it for a person to look at
        return
    if not (_safe_relative(staging_name) and staging_name.startswith(_STAGING_PREFIX)
            and all(_safe_relative(f) for f in files + remove)):
        return
    staging = os.path.join(path, staging_name)
    for name in files:
        source, target = os.path.join(staging, name), os.path.join(path, name)
        if os.path.lexists(source):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(source, target)
            _fsync_directory(os.path.dirname(target))
    for name in remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    os.unlink(journal_path)
    _fsync_directory(path)
    shutil.rmtree(staging, ignore_errors=True)


def recover_directory(path: str) -> None:
    """Finishes commits into ``path`` that a crash interrupted (see `atomic_files`); nothing to do otherwise.

    Staging folders without a journal (a crash before the commit began) are removed once a day old; younger ones may
    belong to a save still running in another process.
    """
    if not os.path.isdir(path):
        return
    journals = [n for n in os.listdir(path) if n.startswith(_JOURNAL_PREFIX) and n.endswith(".json")]
    stale = [n for n in os.listdir(path) if n.startswith(_STAGING_PREFIX)]
    if not journals and not stale:
        return
    with _folder_lock(path):
        for name in sorted(os.listdir(path)):
            if name.startswith(_JOURNAL_PREFIX) and name.endswith(".json"):
                _roll_forward(path, os.path.join(path, name))
        now = time.time()
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if name.startswith(_STAGING_PREFIX) and os.path.isdir(full):
                with contextlib.suppress(OSError):
                    if now - os.stat(full).st_mtime > _STALE_STAGING_SECONDS:
                        shutil.rmtree(full, ignore_errors=True)


def begin_staging(path: str) -> str:
    """Creates ``path`` if needed, finishes interrupted commits into it, and returns a new staging folder inside it
    (the first of `begin_staging`, `commit_staging`, `abort_staging`; `atomic_files` wraps the three)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    recover_directory(path)
    staging = tempfile.mkdtemp(dir=path, prefix=_STAGING_PREFIX)
    os.chmod(staging, _default_mode(0o777))  # mkdtemp makes it 0o700; subfolders moved out keep the usual mode
    return staging


def abort_staging(staging: str) -> None:
    """Discards a staging folder of `begin_staging`; the destination is untouched."""
    shutil.rmtree(staging, ignore_errors=True)


def commit_staging(path: str, staging: str, remove_matching: Optional[Pattern[str]] = None) -> None:
    """Moves every file of ``staging`` (from `begin_staging`) into ``path`` as one set, under a journal.

    Args:
        path (`str`): The destination folder.
        staging (`str`): The staging folder inside it, with the new files.
        remove_matching (`re.Pattern`, *optional*): Top-level file names of ``path`` that the new set supersedes
            (files of ours under names the new set does not use): those the pattern matches in full and the staging
            does not hold are deleted after the moves, by the same journal (a crash rolls the deletion forward too).
    """
    path = os.path.abspath(path)
    files = staged_files(staging)
    with _folder_lock(path):
        remove = []
        if remove_matching is not None:
            remove = sorted(name for name in os.listdir(path)
                            if remove_matching.fullmatch(name) and name not in files
                            and os.path.isfile(os.path.join(path, name)))
        journal = os.path.join(path, f"{_JOURNAL_PREFIX}{os.path.basename(staging)}.json")
        atomic_write_json(journal, {"staging": os.path.basename(staging), "files": files, "remove": remove})
        _roll_forward(path, journal)


@contextlib.contextmanager
def atomic_files(path: str, remove_matching: Optional[Pattern[str]] = None) -> Iterator[str]:
    """Yields a staging folder; on success every file written into it replaces its counterpart in ``path`` as one
    set; on error nothing in ``path`` changes. Files of ``path`` that were not staged are never touched, except those
    ``remove_matching`` names (see `commit_staging`).

    Examples:
        ```python
        with atomic_files("my-project/adapter") as folder:
            model.save_pretrained(folder)
        ```
    """
    staging = begin_staging(path)
    try:
        yield staging
    except BaseException:
        abort_staging(staging)
        raise
    commit_staging(path, staging, remove_matching)


# ------------------------------------------------------------------------------- a folder the library owns
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
