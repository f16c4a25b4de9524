"""Several processes: averaging the adapter's gradients, and ending a run without the gloo teardown race.

`average_gradients`: the GRADIEND objective is not a forward pass of the model, so DDP's forward-driven reduction
does not apply; `GradiendTrainer.training_step` averages the adapter's gradients over the processes itself, once per
optimizer step (one all-reduce of all adapter gradients, flattened into one buffer per dtype).

`end_distributed_training`:
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
from typing import TYPE_CHECKING, Any, Iterable

import torch

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)


BUCKET_ELEMENTS = 1 << 24
"""The most gradient entries one all-reduce carries (64 MB in float32): bounds the extra memory of averaging."""


def average_gradients(parameters: Iterable[torch.nn.Parameter], group: Any = None) -> None:
    """Replaces every parameter's ``.grad`` by its mean over the processes of ``group`` (default: all), in place.

    Gradients are flattened into buckets of at most `BUCKET_ELEMENTS` entries (one all-reduce each); parameters
    without a gradient take part with zeros, so that every process sends the same layout. A module-sharded run
    averages each shard over its replica group (`gradiend_peft.training.sharding`).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size(group)
    groups: dict[tuple, list[list[torch.nn.Parameter]]] = {}
    for param in parameters:
        buckets = groups.setdefault((param.dtype, param.device), [[]])
        if buckets[-1] and sum(p.numel() for p in buckets[-1]) + param.numel() > BUCKET_ELEMENTS:
            buckets.append([])
        buckets[-1].append(param)
    for buckets in groups.values():
        for bucket in buckets:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=group)
            flat.div_(world)
            offset = 0
            for param in bucket:
                values = flat[offset : offset + param.numel()].view_as(param)
                if param.grad is None:
                    param.grad = values.clone()
                else:
                    param.grad.copy_(values)
                offset += param.numel()


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
