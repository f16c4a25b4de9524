"""Writing files atomically, and reading files of a folder without following links out of it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import time
from typing import Any, Iterable, Iterator, Optional

try:  # advisory locks: POSIX only; elsewhere commits are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


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


class UntrustedAdapterError(ValueError):
    """An adapter folder whose files are malformed, oversized, inconsistent with each other or with the model, or that
    would make a save or a load act outside the folder (a crafted commit journal, a link)."""


def _lstat(name: str, dir_fd: int) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def folder_lock(path: str, shared: bool = False) -> Iterator[int]:
    """Opens the folder ``path`` and holds an advisory lock on it (exclusive for a commit, shared for a reader that
    must see one save's files); yields the folder's descriptor, for operations relative to it. No lock file is left
    behind."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def open_regular_file(name: str, dir_fd: Optional[int] = None, follow_links: bool = False) -> int:
    """Opens ``name`` (relative to ``dir_fd``) for reading and returns the descriptor, refusing anything but a regular
    file: a link (unless ``follow_links``: files of the Hub cache are links into its blob store), a folder, a FIFO
    (whose read would block).

    Raises:
        `FileNotFoundError`: if there is no such file.
        `UntrustedAdapterError`: naming the file and what it is instead.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UntrustedAdapterError(f"{name!r} cannot be read as a plain file ({err.strerror}): a link, a folder or "
                                    "another special file. gradiend_peft reads only regular files inside the adapter "
                                    "folder: put the file itself there.") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UntrustedAdapterError(f"{name!r} is not a regular file (a folder or a special file): gradiend_peft reads "
                                    "only regular files inside the adapter folder.")
    os.set_blocking(fd, True)
    return fd


def check_targets(path: str, names: Iterable[str]) -> None:
    """Refuses a save before it writes anything if a name it writes is taken in ``path`` by something other than a
    regular file (a folder, a link), which the save would otherwise fail on half-way; for a ``sub/file`` name, also if
    ``sub`` is taken by something other than a real folder (a link, a file).

    Raises:
        `IsADirectoryError` / `FileExistsError`: naming the path and the fix.
    """
    for name in names:
        sub = os.path.dirname(name)
        if sub:
            folder = os.path.join(path, sub)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    raise FileExistsError(f"{folder!r} is a link or a file, but the save writes files into a folder of "
                                          "that name (and never writes through a link). Nothing was written: remove "
                                          "it, or save into another folder.")
        full = os.path.join(path, name)
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{full!r} is a folder, but the save writes a file of that name. Nothing was "
                                    "written: move or rename the folder, or save into another folder.")
        if not stat.S_ISREG(mode):
            raise FileExistsError(f"{full!r} is a link or a special file, but the save writes a regular file of that "
                                  "name (and never writes through a link). Nothing was written: remove it, or save "
                                  "into another folder.")


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


def atomic_write_at(folder_fd: int, name: str, data: bytes) -> None:
    """Writes ``data`` to the file ``name`` of the folder open as ``folder_fd`` atomically (a hidden temporary file
    beside it, moved into place; never through a link). The file keeps the permissions of the one it replaces."""
    previous = _lstat(name, folder_fd)
    if previous is not None and not stat.S_ISREG(previous.st_mode):
        raise IsADirectoryError(f"{name!r} is a folder or a link, but a regular file of that name is being written. "
                                "Nothing was written: move it away, or save into another folder.")
    mode = previous.st_mode & 0o7777 if previous is not None else _default_mode(0o666)
    draft = f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder_fd)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(draft, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft, dir_fd=folder_fd)
        raise
    _fsync_fd(folder_fd)


