"""Atomic writes: a kill at any moment leaves the old content or the new one, never a mix, and nothing we did not
write is touched.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: one file, written beside its destination and moved
  into place with ``os.replace``.
- `atomic_files`: a set of files saved into a folder the user owns (an adapter: config, weights, card). The files are
  staged in a hidden folder inside the destination, then moved into place one by one under a journal. Files of the
  destination that the save does not write are left alone, except files of ours that the new set replaces under
  another name (``superseded``: e.g. the shards of a sharded adapter after a single-file save), which the journal
  deletes after the moves. Concurrent commits to one folder are serialised with an advisory lock on the folder.
  `begin_staging`, `commit_staging` and `abort_staging` are the same protocol in three calls, for saves whose files
  several processes write (a module-sharded adapter). With ``subfolders=True`` the set may also hold files one
  folder down (``sub/file``: a folder of adapters and their index, `gradiend_peft.pair_adapters`), committed under
  the same journal; a sub-folder is never followed through a link.
- `atomic_directory`: replaces a whole folder that the library owns (a conversion cache entry) in one step.

Who finishes an interrupted commit. A crash between two moves leaves the folder with some new files, some old ones
and the journal. **Loads are read-only**: `gradiend_peft.load_gradiend_model`, ``PeftModel.from_pretrained`` and
``load_adapter`` never roll a journal forward and never delete anything; a folder holding a journal is refused
(`refuse_interrupted_commit`), naming the fix. Only a save finishes the commit (`commit_staging`, the library's
saves) or discards it (`discard_interrupted_commits`, peft's ``save_pretrained``, which has already written its files
in place), or the folder's owner does, explicitly (`recover_directory`). Each of them first checks every journal
strictly (see `commit_staging`): a folder downloaded from someone else may hold a crafted journal, links to other
folders, or a staging folder that is a link, and none of them may make a save write, delete or read anything outside
the folder, or anything inside it that the save does not own. Every check uses ``lstat`` and every operation is
relative to an open folder descriptor (``dir_fd``, ``O_NOFOLLOW``), so no path component is followed through a link.
"""

from .commit import (
    abort_staging,
    atomic_files,
    begin_staging,
    commit_staging,
    discard_interrupted_commits,
    recover_directory,
    refuse_interrupted_commit,
    staged_files,
)
from .files import (
    UntrustedAdapterError,
    atomic_write_at,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_targets,
    folder_lock,
    json_safe,
    open_regular_file,
)
from .owned import atomic_directory, recover_owned_directory, replace_directory

__all__ = [
    "UntrustedAdapterError",
    "abort_staging",
    "atomic_directory",
    "atomic_files",
    "atomic_write_at",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "begin_staging",
    "check_targets",
    "commit_staging",
    "discard_interrupted_commits",
    "folder_lock",
    "json_safe",
    "open_regular_file",
    "recover_directory",
    "recover_owned_directory",
    "refuse_interrupted_commit",
    "replace_directory",
    "staged_files",
]
