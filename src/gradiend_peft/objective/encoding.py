"""Encoding rows: the latent ``h`` of a row group's gradient, or of every row's own gradient.

- `encode_group`: ``h = act(s <E, g> + b_e)`` for the batch-mean ``source`` gradient of a row group (one GRADIEND
  sample, as in training), shape ``(k,)``;
- `encode_rows`: ``h_i`` for every row ``i`` on its own, from one forward and one backward pass over the whole batch
  (`gradiend_peft.objective.gradients.per_example_encoder_dots`: per-example gradients are never formed), shape
  ``(B, k)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import torch

from .gradients import batch_gradients, per_example_dots

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel

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
                autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Every row's latent on its own, ``h_i = act(s <E, g_i> + b_e)``; shape ``(B, k)`` (one backward pass).

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): Collated rows.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.
    """
    name = tuner.resolve_adapter(adapter_name)
    source = tuner.peft_config[name].source
    # detached probes: the encodings are returned detached, so no graph of the per-module dot products is built (it
    # would keep every module's float32 projection, and with a half-precision base its float32 input and output
    # gradient, until the last module is done)
    probes = {m: layer.full_encoder(name).detach() for m, layer in tuner.gradiend_layers(name).items()}
    dots = per_example_dots(tuner, batch, {source: probes}, autocast_dtype)[source]
    with torch.no_grad():
        return tuner.latent_from_dots(dots, name)
