"""A set of files committed into a folder under a journal (see `gradiend_peft.atomic`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from .files import UntrustedAdapterError, _default_mode, _fsync_fd, _lstat, check_targets, folder_lock, open_regular_file

_STAGING_PREFIX = ".gradiend-staging-"
_JOURNAL_PREFIX = ".gradiend-commit-"
_STALE_STAGING_SECONDS = 24 * 3600
NameFilter = Callable[[str], bool]
_STAGING_NAME = re.compile(r"\.gradiend-staging-[A-Za-z0-9_]{1,64}")  # what tempfile.mkdtemp makes of the prefix
_JOURNAL_NAME = re.compile(r"\.gradiend-commit-(\.gradiend-staging-[A-Za-z0-9_]{1,64})\.json")
_JOURNAL_DRAFT = ".journal"
_MAX_JOURNAL_BYTES = 1 << 20
_SUBFOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK


def _nothing(name: str) -> bool:
    return False


def _plain(name: Any) -> bool:
    """A plain top-level file name: no path, no hidden or special name."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and not name.startswith(".")
            and not any(c in name for c in "/\\\x00"))


def _relative(name: Any) -> bool:
    """A plain top-level file name, or ``sub/file``: one plain sub-folder name and one plain file name."""
    return isinstance(name, str) and name.count("/") <= 1 and all(_plain(part) for part in name.split("/"))


@contextlib.contextmanager
def _parent(dir_fd: int, name: str, create: bool = False) -> Iterator[tuple[Optional[int], str]]:
    """``(descriptor of the folder holding name, its base name)``: ``dir_fd`` for a top-level name; for ``sub/file``
    the sub-folder opened without following a link (an ``OSError`` if it is a link or not a folder), made first with
    ``create``, ``None`` where it is absent."""
    sub, _, base = name.rpartition("/")
    if not sub:
        yield dir_fd, name
        return
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(sub, 0o777, dir_fd=dir_fd)  # the usual mode, less the umask
    try:
        fd = os.open(sub, _SUBFOLDER_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        fd = None
    try:
        yield fd, base
    finally:
        if fd is not None:
            os.close(fd)


def _kind(name: str, dir_fd: int) -> Optional[str]:
    """What ``name`` (top-level or ``sub/file``) is, following no link: ``"file"`` (a regular file), ``"other"`` (a
    link, a folder, a special file, or a file whose sub-folder is not a real folder) or ``None`` (absent)."""
    sub = name.rpartition("/")[0]
    if sub:
        info = _lstat(sub, dir_fd)
        if info is not None and not stat.S_ISDIR(info.st_mode):
            return "other"
    with _parent(dir_fd, name) as (fd, base):
        info = _lstat(base, fd) if fd is not None else None
    return None if info is None else "file" if stat.S_ISREG(info.st_mode) else "other"


def staged_files(staging: str) -> list[str]:
    """The names of the files in ``staging``, sorted."""
    return sorted(os.listdir(staging))


@dataclass(frozen=True)
class _Journal:
    name: str
    staging: str
    files: tuple[str, ...]
    remove: tuple[str, ...]


def _refusal(folder: str, journal: str, problem: str) -> UntrustedAdapterError:
    return UntrustedAdapterError(
        f"{folder!r} holds {journal!r}, the journal of an interrupted save, but {problem}. gradiend_peft never writes a "
        "journal like that, so it acted on none of it and changed nothing. If the folder is yours, look at the journal "
        f"and delete it and its {_STAGING_PREFIX}* folder by hand; if it is not, do not use the folder.")


def _read_journal(folder_fd: int, name: str, folder: str, allowed: NameFilter, removable: NameFilter) -> _Journal:
    """The journal ``name``, checked: a plain JSON file naming its own staging folder, moving only names ``allowed``
    and deleting only names ``removable`` (plain top-level names, or ``sub/file`` where the filter accepts that)."""
    match = _JOURNAL_NAME.fullmatch(name)
    if match is None:
        raise _refusal(folder, name, "its name is not one gradiend_peft gives a journal")
    try:
        fd = open_regular_file(name, folder_fd)
    except OSError as err:
        raise _refusal(folder, name, f"it cannot be read ({err})") from err
    except UntrustedAdapterError as err:
        raise _refusal(folder, name, "it is not a regular file") from err
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(_MAX_JOURNAL_BYTES + 1)
    try:
        raw = json.loads(data.decode("utf-8")) if len(data) <= _MAX_JOURNAL_BYTES else None
    except (UnicodeDecodeError, ValueError):
        raw = None
    if not (isinstance(raw, dict) and set(raw) <= {"staging", "files", "remove"} and isinstance(raw.get("files"), list)
            and isinstance(raw.get("remove", []), list)):
        raise _refusal(folder, name, "it is not a JSON object of 'staging', 'files' and 'remove'")
    if raw.get("staging") != match.group(1):
        raise _refusal(folder, name, f"it names the staging folder {raw.get('staging')!r} instead of its own")
    files, remove = raw["files"], raw.get("remove", [])
    for file in files:
        if not (_relative(file) and allowed(file)):
            raise _refusal(folder, name, f"it would move {file!r}, which is not a file the save writes into the folder")
    for file in remove:
        if not (_relative(file) and removable(file)):
            raise _refusal(folder, name, f"it would delete {file!r}, which is not a file of ours that a save replaces")
    if len(set(files)) != len(files) or set(files) & set(remove):
        raise _refusal(folder, name, "it names a file twice")
    return _Journal(name, match.group(1), tuple(files), tuple(remove))


def _open_staging(folder_fd: int, journal: _Journal, folder: str) -> int:
    """The descriptor of the journal's staging folder after checking every path the journal would touch (lstat, no
    link followed): the staging a real folder, every staged source and every target a regular file or absent (a
    ``sub/file`` also when its sub-folder is a link or not a folder)."""
    info = _lstat(journal.staging, folder_fd)
    if info is None or not stat.S_ISDIR(info.st_mode):
        state = "missing" if info is None else "a link or not a folder"
        raise _refusal(folder, journal.name, f"its staging folder {journal.staging!r} is {state}")
    staging_fd = os.open(journal.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd)
    try:
        opened = os.fstat(staging_fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise _refusal(folder, journal.name, "its staging folder changed while it was checked")
        for file in journal.files:
            if _kind(file, staging_fd) == "other":
                raise _refusal(folder, journal.name, f"its staged {file!r} is not a regular file")
            if _kind(file, folder_fd) == "other":
                raise _refusal(folder, journal.name, f"{file!r} in the folder is a link or a folder")
        for file in journal.remove:
            if _kind(file, folder_fd) == "other":
                raise _refusal(folder, journal.name, f"{file!r}, which it would delete, is a link or a folder")
    except BaseException:
        os.close(staging_fd)
        raise
    return staging_fd


def _move(name: str, source_fd: int, target_fd: int) -> None:
    """One move of a commit: ``name`` from the staging folder into the destination (a rename, never a copy), unless
    it was moved before a crash; a ``sub/file`` into the destination's sub-folder, made if needed."""
    with _parent(source_fd, name) as (source, base):
        if source is None or _lstat(base, source) is None:
            return
        with _parent(target_fd, name, create=True) as (target, _):
            os.replace(base, base, src_dir_fd=source, dst_dir_fd=target)
            if target != target_fd:
                _fsync_fd(target)


def _remove(name: str, folder_fd: int) -> None:
    with _parent(folder_fd, name) as (fd, base):
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base, dir_fd=fd)
            if fd != folder_fd:
                _fsync_fd(fd)


def _finish(folder_fd: int, journal: _Journal, staging_fd: int) -> None:
    """Completes a checked commit: the moves in the journal's order, the deletions, then the journal and staging go."""
    for name in journal.files:
        _move(name, staging_fd, folder_fd)
    for name in journal.remove:
        _remove(name, folder_fd)
    _fsync_fd(folder_fd)
    os.unlink(journal.name, dir_fd=folder_fd)
    _fsync_fd(folder_fd)
    shutil.rmtree(journal.staging, dir_fd=folder_fd, ignore_errors=True)


def _discard(folder_fd: int, journal: _Journal) -> None:
    os.unlink(journal.name, dir_fd=folder_fd)
    _fsync_fd(folder_fd)
    shutil.rmtree(journal.staging, dir_fd=folder_fd, ignore_errors=True)


def _settle(folder_fd: int, folder: str, allowed: NameFilter, removable: NameFilter, finish: bool) -> None:
    """Under the exclusive lock (so every journal found belongs to a save that died): checks every interrupted commit
    strictly, and only then finishes (``finish``) or discards them all."""
    names = sorted(n for n in os.listdir(folder_fd) if n.startswith(_JOURNAL_PREFIX))
    journals = [_read_journal(folder_fd, name, folder, allowed, removable) for name in names]
    opened: list[tuple[_Journal, int]] = []
    try:
        for journal in journals:
            opened.append((journal, _open_staging(folder_fd, journal, folder)))
        for journal, staging_fd in opened:
            if finish:
                _finish(folder_fd, journal, staging_fd)
            else:
                _discard(folder_fd, journal)
    finally:
        for _, staging_fd in opened:
            os.close(staging_fd)


def _remove_stale_staging(folder_fd: int, keep: str) -> None:
    """Staging folders without a journal (a save that died before its commit) go once a day old; younger ones may
    belong to a save still running in another process."""
    now = time.time()
    for name in os.listdir(folder_fd):
        info = _lstat(name, folder_fd) if _STAGING_NAME.fullmatch(name) and name != keep else None
        if info is not None and stat.S_ISDIR(info.st_mode) and now - info.st_mtime > _STALE_STAGING_SECONDS:
            shutil.rmtree(name, dir_fd=folder_fd, ignore_errors=True)


def refuse_interrupted_commit(path: str, fix: Optional[str] = None) -> None:
    """Refuses to read a folder that holds the journal of an interrupted commit: its files may come from two saves.
    Loads are read-only; they neither finish nor discard it.

    Args:
        path (`str`): The folder.
        fix (`str`, *optional*): The ways out the message names (default: those of an adapter folder).

    Raises:
        `UntrustedAdapterError`: naming the journal and the ways out.
    """
    journals = sorted(n for n in os.listdir(path) if n.startswith(_JOURNAL_PREFIX))
    if journals:
        raise UntrustedAdapterError(
            f"{path!r} holds {journals[0]!r}: a save into this folder was interrupted (or someone put a journal there), "
            "so its files may come from two saves. A load never changes the folder it reads, so it stops here. "
            + (fix or "Save the adapter into the folder again (gradiend_peft.save_adapter or model.save_pretrained "
               "first check the journal, then finish or discard the interrupted save), or, if the folder is yours, "
               "finish it with gradiend_peft.saving.finish_interrupted_save(folder)."))


def recover_directory(path: str, allowed: NameFilter, removable: NameFilter = _nothing) -> None:
    """Finishes the commits into ``path`` that a crash interrupted, for the folder's owner: no load or save does this
    on its own (saves finish them as part of their commit, loads refuse the folder).

    Every journal is checked first (`commit_staging` lists the checks); anything else raises and nothing is written.

    Args:
        path (`str`): The folder.
        allowed (`Callable[[str], bool]`): The file names a journal may move into the folder.
        removable (`Callable[[str], bool]`): The file names a journal may delete (default: none).

    Raises:
        `UntrustedAdapterError`: if a journal is not one gradiend_peft wrote.
    """
    path = os.path.abspath(path)
    with folder_lock(path) as folder_fd:
        _settle(folder_fd, path, allowed, removable, finish=True)


def discard_interrupted_commits(path: str, folder_fd: int, allowed: NameFilter, removable: NameFilter = _nothing) -> None:
    """For a save that writes the folder's files in place (peft's ``save_pretrained``), holding `folder_lock` of
    ``path`` (``folder_fd``): drops the interrupted commits after checking each as `recover_directory` does (finishing
    them would move older files over the ones just written).

    Raises:
        `UntrustedAdapterError`: if a journal is not one gradiend_peft wrote (nothing is deleted).
    """
    _settle(folder_fd, os.path.abspath(path), allowed, removable, finish=False)


def begin_staging(path: str, targets: Iterable[str] = ()) -> str:
    """Creates ``path`` if needed, refuses ``targets`` (the names the save will write) taken by a folder or a link
    (`check_targets`), and returns a new staging folder inside ``path`` (the first of `begin_staging`,
    `commit_staging`, `abort_staging`; `atomic_files` wraps the three)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    check_targets(path, targets)
    staging = tempfile.mkdtemp(dir=path, prefix=_STAGING_PREFIX)
    os.chmod(staging, _default_mode(0o777))  # mkdtemp makes it 0o700
    return staging


def abort_staging(staging: str) -> None:
    """Discards a staging folder of `begin_staging`; the destination is untouched."""
    shutil.rmtree(staging, ignore_errors=True)


def commit_staging(path: str, staging: str, allowed: NameFilter, removable: NameFilter = _nothing,
                   superseded: Optional[Callable[[str, list[str]], Iterable[str]]] = None,
                   first: Sequence[str] = (), subfolders: bool = False) -> None:
    """Moves every file of ``staging`` (from `begin_staging`) into ``path`` as one set, under a journal.

    Holding the folder's exclusive lock, it (1) checks the staged files (plain top-level regular files; with
    ``subfolders`` also the regular files one level down, ``sub/file``) and their targets (`check_targets`); (2)
    finishes the commits a crash interrupted, after checking each journal strictly: it may name only plain top-level
    files or ``sub/file`` names that ``allowed`` accepts or this save writes, delete only names ``removable``
    accepts, its staging must be a real folder (lstat, never a link) directly inside ``path``, every staged source a
    regular file, no target a link or a folder, no sub-folder a link or a file, and nothing is followed through a link
    (every operation is relative to the folders' descriptors, a sub-folder opened with ``O_NOFOLLOW``); anything else
    raises `UntrustedAdapterError`; (3) writes its own journal and moves the files (a ``sub/file`` into the
    sub-folder, made if needed), ``first`` first, then the rest by name, then deletes ``superseded``. Until the
    journal is written, an error removes the staging and leaves ``path`` as it was; after it, the next save finishes
    the commit.

    Args:
        path (`str`): The destination folder.
        staging (`str`): The staging folder inside it, with the new files.
        allowed (`Callable[[str], bool]`): The names an interrupted commit may move (the files this kind of save
            writes).
        removable (`Callable[[str], bool]`): The names a commit may delete.
        superseded (`Callable`, *optional*): ``(path, staged names) -> names`` of files of ours the new set replaces
            under other names (deleted after the moves, by the same journal); called under the lock.
        first (`Sequence[str]`): Names moved before the others, in this order.
        subfolders (`bool`): Commit the files of the staging's sub-folders too (one level: a set of folders, each
            with its files, saved as one set; a file's name in ``allowed``, ``removable``, ``superseded`` and
            ``first`` is then ``sub/file``). Without it a staged sub-folder is refused.

    Raises:
        `UntrustedAdapterError`: if an interrupted commit's journal fails the checks (nothing is written).
    """
    path, staging = os.path.abspath(path), os.path.abspath(staging)
    name = os.path.basename(staging)
    if os.path.dirname(staging) != path or not _STAGING_NAME.fullmatch(name):
        abort_staging(staging)
        raise ValueError(f"{staging!r} is not a staging folder of {path!r} (use begin_staging).")
    with folder_lock(path) as folder_fd:
        try:
            staging_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd)
        except BaseException:
            abort_staging(staging)
            raise
        try:
            journal = _prepare(folder_fd, path, staging_fd, name, allowed, removable, superseded, first, subfolders)
        except BaseException:
            os.close(staging_fd)
            abort_staging(staging)
            raise
        try:
            _finish(folder_fd, journal, staging_fd)
        finally:
            os.close(staging_fd)


def _staged(staging_fd: int, path: str, subfolders: bool) -> list[str]:
    """The staged files, by name (with ``subfolders``, those of its sub-folders as ``sub/file``), each checked to be
    a regular file and flushed to disk (before the journal promises it)."""
    files = []
    for entry in sorted(os.listdir(staging_fd)):
        info = _lstat(entry, staging_fd)
        names = [entry]
        if subfolders and _plain(entry) and info is not None and stat.S_ISDIR(info.st_mode):
            fd = os.open(entry, _SUBFOLDER_FLAGS, dir_fd=staging_fd)
            try:
                names = [f"{entry}/{file}" for file in sorted(os.listdir(fd))]
                _fsync_fd(fd)
            finally:
                os.close(fd)
        for file in names:
            if not (_relative(file) and _kind(file, staging_fd) == "file"):
                raise ValueError(f"The save wrote {file!r} into its staging folder, which is not a plain top-level file"
                                 f"{' or a file of a sub-folder' if subfolders else ''}; nothing in {path!r} was changed.")
            with _parent(staging_fd, file) as (fd, base):
                descriptor = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                _fsync_fd(descriptor)
                os.close(descriptor)
            files.append(file)
    return files


def _prepare(folder_fd: int, path: str, staging_fd: int, name: str, allowed: NameFilter, removable: NameFilter,
             superseded: Optional[Callable[[str, list[str]], Iterable[str]]], first: Sequence[str],
             subfolders: bool) -> _Journal:
    """Steps (1) and (2) of `commit_staging`, then its journal, written and flushed."""
    files = _staged(staging_fd, path, subfolders)
    check_targets(path, files)
    _settle(folder_fd, path, lambda file: allowed(file) or file in files, removable, finish=True)
    _remove_stale_staging(folder_fd, keep=name)
    remove = sorted(set(superseded(path, files))) if superseded is not None else []
    for file in remove:
        if not (_relative(file) and removable(file)) or file in files:
            raise ValueError(f"{file!r} cannot be deleted by a commit into {path!r}.")
    order = [f for f in first if f in files] + [f for f in files if f not in first]
    journal = _Journal(f"{_JOURNAL_PREFIX}{name}.json", name, tuple(order), tuple(remove))
    data = json.dumps({"staging": name, "files": list(journal.files), "remove": list(journal.remove)}, indent=2)
    fd = os.open(_JOURNAL_DRAFT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=staging_fd)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(_JOURNAL_DRAFT, journal.name, src_dir_fd=staging_fd, dst_dir_fd=folder_fd)
    _fsync_fd(folder_fd)
    return journal


@contextlib.contextmanager
def atomic_files(path: str, allowed: NameFilter, removable: NameFilter = _nothing,
                 superseded: Optional[Callable[[str, list[str]], Iterable[str]]] = None, first: Sequence[str] = (),
                 targets: Iterable[str] = (), subfolders: bool = False) -> Iterator[str]:
    """Yields a staging folder; on success every file written into it replaces its counterpart in ``path`` as one
    set; on error nothing in ``path`` changes. Files of ``path`` that were not staged are never touched, except those
    ``superseded`` names (see `commit_staging` for the arguments and the checks).

    Examples:
        ```python
        with atomic_files("my-project/merged", allowed=lambda name: name.endswith(".json")) as folder:
            model.save_pretrained(folder)
        ```
    """
    staging = begin_staging(path, targets)
    try:
        yield staging
    except BaseException:
        abort_staging(staging)
        raise
    commit_staging(path, staging, allowed, removable, superseded, first, subfolders)


