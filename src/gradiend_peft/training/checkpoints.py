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

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` holds a fully written Trainer checkpoint of a GRADIEND adapter."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state) or not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
        return False
    try:
        with open(state, encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str, set_aside_incomplete: bool = True) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``folder`` (``None`` if there is none).

    Args:
        folder (`str`): The Trainer's ``output_dir``.
        set_aside_incomplete (`bool`): Rename newer incomplete checkpoints to ``checkpoint-N.incomplete-<time>``.
    """
    if not folder or not os.path.isdir(folder):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(folder)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(folder, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(folder, name)
        if is_complete_checkpoint(path):
            return path
        if set_aside_incomplete:
            aside = f"{path}.incomplete-{int(time.time())}"
            os.rename(path, aside)
            logger.warning("Checkpoint %s was not completely written (killed while saving?); moved to %s.", path, aside)
    return None
