"""Ending a multi-process training run without the gloo teardown race.

torch's process groups hold worker threads. When a process exits without destroying its process group, a gloo worker
may still hold finished collectives whose tensors have Python owners, and the interpreter's finalisation aborts the
process ("terminate called without an active exception", pytorch/pytorch#179291). Destroying the group explicitly is
the documented remedy, but the order matters: DDP's reducer also holds the group, and its destructor waits for the
worker threads while holding the GIL. If the reducer outlives the registry entry, that wait can deadlock against a
worker that needs the GIL to drop a tensor. So the DDP wrapper goes first, then the group.
"""

from __future__ import annotations

import gc
import logging
import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)


def end_distributed_training(trainer: "Trainer") -> bool:
    """Waits for every process, releases the trainer's DDP wrapper, then destroys the default process group.

    Args:
        trainer (`transformers.Trainer`): A trainer whose training has finished.

    Returns:
        `bool`: ``True`` when a process group was destroyed, ``False`` when none was initialised (a single process).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    trainer.accelerator.wait_for_everyone()
    wrapper = trainer.model_wrapped
    released = weakref.ref(wrapper) if wrapper is not None and wrapper is not trainer.model else None
    trainer.model_wrapped = trainer.model
    del wrapper
    trainer.accelerator.free_memory()  # accelerate's own references to the wrapped model and optimizer
    gc.collect()
    if released is not None and released() is not None:
        holders = len(gc.get_referrers(released()))
        logger.warning("The DDP-wrapped model is still referenced (%d referrers) while the process group is "
                       "destroyed; drop those references first, or the process may hang at exit.", holders)
    trainer.accelerator.end_training()
    return True
