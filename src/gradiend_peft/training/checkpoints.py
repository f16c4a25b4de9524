"""Finding the checkpoint to resume from when a run may have been killed while writing one.

transformers' Trainer writes ``checkpoint-N`` in place: adapter, optimizer, scheduler, RNG states, and
``trainer_state.json`` after them. A kill in between leaves a folder that looks like the newest checkpoint but
is incomplete. A checkpoint counts here only when its ``trainer_state.json`` parses and its adapter weights are
present; newer incomplete folders are renamed aside (never deleted), so that neither resuming nor the Trainer's
checkpoint rotation picks them up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Optional

from ..loading import INDEX_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_OPTIMIZER_SHARD = re.compile(r"^optimizer-shard-(\d{5})-of-(\d{5})\.pt$")


def _sharded_files_present(path: str) -> bool:
    """A module-sharded checkpoint: every shard file its index names, and every shard's optimizer file."""
    try:
        with open(os.path.join(path, INDEX_NAME), encoding="utf-8") as handle:
            files = set(json.load(handle)["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if not files or not all(isinstance(f, str) and os.path.isfile(os.path.join(path, os.path.basename(f))) for f in files):
        return False
    counts = {int(m.group(2)) for m in map(_OPTIMIZER_SHARD.match, os.listdir(path)) if m}
    return all(os.path.isfile(os.path.join(path, f"optimizer-shard-{i:05d}-of-{n:05d}.pt"))
               for n in counts for i in range(1, n + 1))


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` holds a fully written Trainer checkpoint of a GRADIEND adapter (one adapter file, or a
    module-sharded adapter's index with all its files)."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return False
    if not (os.path.isfile(os.path.join(path, WEIGHTS_NAME)) or _sharded_files_present(path)):
        return False
    try:
        with open(state, encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def checkpoint_folders(folder: str) -> list[str]:
    """The ``checkpoint-<step>`` folders in ``folder`` (the Trainer's ``output_dir``), by step."""
    if not folder or not os.path.isdir(folder):
        return []
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(folder)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(folder, name))
    )
    return [os.path.join(folder, name) for _, name in steps]


def last_complete_checkpoint(folder: str, set_aside_incomplete: bool = True) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``folder`` (``None`` if there is none).

    Args:
        folder (`str`): The Trainer's ``output_dir``.
        set_aside_incomplete (`bool`): Rename newer incomplete checkpoints to ``checkpoint-N.incomplete-<time>``.
    """
    for path in reversed(checkpoint_folders(folder)):
        if is_complete_checkpoint(path):
            return path
        if set_aside_incomplete:
            aside = f"{path}.incomplete-{int(time.time())}"
            os.rename(path, aside)
            logger.warning("Checkpoint %s was not completely written (killed while saving?); moved to %s.", path, aside)
    return None
