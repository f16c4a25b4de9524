"""Encoding rows: the latent ``h`` of a row group's gradient, or of every row's own gradient.

- `encode_group`: ``h = act(s <E, g> + b_e)`` for the batch-mean ``source`` gradient of a row group (one GRADIEND
  sample, as in training), shape ``(k,)``;
- `encode_rows`: ``h_i`` for every row ``i`` on its own, from one forward and one backward pass over the whole batch
  (`gradiend_peft.objective.gradients.per_example_encoder_dots`: per-example gradients are never formed), shape
  ``(B, k)``; also for one process's share of a module-sharded adapter (``shard``, as in
  `gradiend_peft.objective.losses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import torch

from .gradients import batch_gradients, per_example_encoder_dots
from .losses import computed, summed

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel
    from .sharded import Shard

__all__ = ["encode_group", "encode_rows"]


def encode_group(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
                 autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The latent of a row group: its batch-mean gradient of the adapter's ``source`` kind, encoded; shape ``(k,)``.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): A collated row group.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.
    """
    name = tuner.resolve_adapter(adapter_name)
    source = tuner.peft_config[name].source
    return tuner.encode_gradients(batch_gradients(tuner, batch, [source], autocast_dtype)[source], name)


def encode_rows(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
                autocast_dtype: Optional[torch.dtype] = None, shard: Optional["Shard"] = None) -> torch.Tensor:
    """Every row's latent on its own, ``h_i = act(s <E, g_i> + b_e)``; shape ``(B, k)`` (one backward pass), detached.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): Collated rows.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.
        shard (`Shard`, *optional*): This process's share of a module-sharded adapter: every row's encoder dot
            products over its modules are summed over the shard's processes (one all-reduce of ``B x k`` numbers);
            the same ``(B, k)`` on every process, which all call it with the same rows.
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    if shard is None:
        tuner.check_complete(name, "Encoding rows")
    partial, failure = computed(shard, lambda: per_example_encoder_dots(tuner, batch, config.source, name,
                                                                         autocast_dtype))
    with torch.no_grad():
        dots = summed(shard, partial, failure, (batch["input_ids"].shape[0], config.latent_dim),
                      tuner.gradiend_encoder_bias[name].device, "The encoder's per-row dot products")
        return tuner.latent_from_dots(dots, name)
