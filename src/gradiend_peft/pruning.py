"""Pruning a GRADIEND adapter to its most important input entries.

- `prune_adapter` (post-pruning, after training): keep the top entries by the L1 norm of their decoder rows,
  ``sum_j |D_j,e|``: the entries whose weights a rewrite moves most.
- `pre_prune_adapter` (before training): keep the top entries by ``|mean signed gradient|`` over a few row groups
  stratified by class: the entries that the feature moves consistently.

The selection is global (one threshold over all target modules, as over the reference's flat input vector). A
pruned layer stores only its kept entries plus their indices into ``W.flatten()``, so a saved adapter shrinks
accordingly; merging, steering, encoding and loading work unchanged. Rebuild any optimiser after pruning.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .objective.gradients import batch_gradients
from .tuner.model import tuner_of

logger = logging.getLogger(__name__)


def _count_to_keep(keep: Union[float, int], total: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"keep must be a fraction in (0, 1] or a number of entries, got {keep!r}.")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep={keep} as a fraction must be in (0, 1]; pass an int to keep a number of entries.")
        return max(1, round(keep * total))
    if not 0 < keep <= total:
        raise ValueError(f"keep={keep} entries is out of range: the adapter has {total} input entries.")
    return keep


def _select_top(scores: Mapping[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Global top-``count`` over per-module score vectors; returns positions within each vector, sorted."""
    names = list(scores)
    flat = torch.cat([scores[name].detach().float().cpu().reshape(-1) for name in names])
    top = torch.topk(flat, count, sorted=False).indices
    keep_mask = torch.zeros(flat.numel(), dtype=torch.bool)
    keep_mask[top] = True
    chosen, offset = {}, 0
    for name in names:
        size = scores[name].numel()
        chosen[name] = torch.nonzero(keep_mask[offset : offset + size]).flatten()
        offset += size
    return chosen


def prune_adapter(model: nn.Module, keep: Union[float, int] = 0.01, adapter_name: Optional[str] = None) -> dict[str, int]:
    """Post-prunes a trained adapter to the input entries with the largest decoder-row L1 norm.

    Args:
        model (`PeftModel` or `GradiendModel`): The model holding the GRADIEND adapter.
        keep (`float` or `int`): A fraction of all entries (default 1%) or a number of entries.
        adapter_name (`str`, *optional*): The adapter (default: the active one).

    Returns:
        `dict[str, int]`: the number of entries kept per target module (also stored as ``config.kept_entries``).
    """
    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    tuner.check_unmerged("prune_adapter")
    layers = tuner.gradiend_layers(name)
    scores = {m: layer.gradiend_decoder[name].detach().abs().sum(0).reshape(-1) for m, layer in layers.items()}
    total = sum(s.numel() for s in scores.values())
    count = _count_to_keep(keep, total)
    tuner.restrict_entries(name, _select_top(scores, count))
    logger.info("Pruned adapter %r to %d of %d input entries by decoder L1.", name, count, total)
    return dict(tuner.peft_config[name].kept_entries)


def pre_prune_adapter(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    keep: Union[float, int] = 0.1,
    adapter_name: Optional[str] = None,
) -> dict[str, int]:
    """Pre-prunes an untrained adapter to the entries with the largest ``|mean signed gradient|``.

    The gradient is the adapter's ``source`` kind, averaged over ``batches`` (a few row groups; give each class
    its share, e.g. 4 groups per class, as the reference's 8 stratified samples).

    Args:
        model (`PeftModel` or `GradiendModel`): The model holding the GRADIEND adapter.
        batches (`Iterable[Mapping[str, torch.Tensor]]`): Collated row groups.
        keep (`float` or `int`): A fraction of all entries (default 10%) or a number of entries.
        adapter_name (`str`, *optional*): The adapter (default: the active one).

    Returns:
        `dict[str, int]`: the number of entries kept per target module.
    """
    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    tuner.check_unmerged("pre_prune_adapter")
    source = tuner.peft_config[name].source
    layers = tuner.gradiend_layers(name)
    sums: dict[str, torch.Tensor] = {}
    count_batches = 0
    for batch in batches:
        grads = batch_gradients(tuner, batch, [source])[source]
        for m, layer in layers.items():
            selected = layer.select(name, grads[m])
            sums[m] = selected if m not in sums else sums[m] + selected
        count_batches += 1
    if count_batches == 0:
        raise ValueError("pre_prune_adapter needs at least one batch of rows.")
    scores = {m: (sums[m] / count_batches).abs() for m in layers}
    total = sum(s.numel() for s in scores.values())
    count = _count_to_keep(keep, total)
    tuner.restrict_entries(name, _select_top(scores, count))
    logger.info("Pre-pruned adapter %r to %d of %d entries by |mean gradient| over %d batches.", name, count, total, count_batches)
    return dict(tuner.peft_config[name].kept_entries)
