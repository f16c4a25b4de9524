"""The GRADIEND objective: the reconstruction loss of a row group, and of every row on its own.

`reconstruction_loss` (the reference semantics): one row group is one sample; its batch-mean ``source`` gradient is
encoded, ``h = act(s <E, S> + b_e)``, and decoded against the batch-mean ``target`` gradient ``T``: the loss is
``sum_m ||d_m(h) - s T_m||^2`` over the adapter's ``n`` entries.

`per_example_reconstruction_loss`: every row ``i`` of a batch is its own GRADIEND sample: its source gradient ``S_i`` is encoded,
``h_i = act(s <E, S_i> + b_e)``, and decoded against its own target gradient ``T_i``. Expanding the square,

    ||D h_i + c - s T_i||^2 = h_i^T (D D^T) h_i + 2 h_i^T (D c) + ||c||^2
                              - 2 s (h_i^T <D, T_i> + <c, T_i>) + s^2 ||T_i||^2

where ``D D^T`` (k x k), ``D c`` (k) and ``||c||^2`` sum over the target modules' entries, and the dot products
``<E_j, S_i>``, ``<D_j, T_i>``, ``<c, T_i>`` come from `gradiend_peft.objective.gradients.per_example_dots`, which contracts
the probes with the activations and output gradients of one backward pass over the whole batch. The last term does
not depend on the adapter and is left out: the returned loss is the per-example reconstruction error minus the
target's energy ``s^2 ||T_i||^2`` (its gradient w.r.t. the adapter is exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import torch

from .gradients import batch_gradients, per_example_dots

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel


def reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The GRADIEND objective for one row group.

    Computes the source and target gradients (one forward pass), calibrates the adapter's gradient scale if that
    has not happened yet (see `GradiendModel.calibrate_gradient_scale`), encodes the scaled source gradient and
    decodes it against the scaled target gradient.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): A collated row group.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.

    Returns:
        `tuple`: ``(loss, h, n)``: ``sum_m ||d_m(h) - s * target_m||^2`` (differentiable w.r.t. the adapter), the
        latent ``h`` (``(k,)``) and the number of entries ``n`` (``loss / n`` is the mean squared error).
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    grads = batch_gradients(tuner, batch, [config.source, config.target], autocast_dtype)
    tuner.calibrate_gradient_scale(grads[config.source], name)
    latent = tuner.encode_gradients(grads[config.source], name)
    return tuner.reconstruction_error(latent, grads[config.target], name), latent, tuner.num_entries(name)


def _weight_shaped(layer, adapter_name: str, rows: torch.Tensor) -> torch.Tensor:
    """``(r, n_m)`` or ``(r, *W.shape)`` adapter rows as ``(r, *W.shape)`` (pruned entries zero), differentiably."""
    if not layer.is_pruned(adapter_name):
        return rows.reshape(rows.shape[0], *layer.weight_shape)
    return torch.stack([layer.scatter(adapter_name, row.reshape(-1)) for row in rows])


def per_example_reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The mean over rows of each row's own GRADIEND loss, up to the adapter-independent ``s^2 ||T_i||^2``.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): A collated batch; every row is one sample.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.

    Returns:
        `tuple`: ``(loss, latents, n)``: the loss (differentiable w.r.t. the adapter; see the module docstring),
        the per-row latents ``(B, k)`` and the number of entries ``n``.
    """
    name = tuner.resolve_adapter(adapter_name)
    tuner.check_complete(name, "The per-example GRADIEND loss")
    source_dots, target_dots = per_example_probe_dots(tuner, batch, name, autocast_dtype)
    latents = tuner.latent_from_dots(source_dots, name)  # (B, k)
    return per_example_losses(tuner, name, latents, target_dots).mean(), latents, tuner.num_entries(name)


def per_example_probe_dots(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: str,
                           autocast_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``i``, summed over the modules holding the adapter here: ``<E_j, S_i>`` (``(B, k)``, unscaled) and
    ``<D_j, T_i>`` followed by ``<c, T_i>`` when the adapter has a decoder bias (``(B, k)`` or ``(B, k + 1)``);
    from one forward pass and one backward pass per gradient kind (`per_example_dots`)."""
    name = adapter_name
    config = tuner.peft_config[name]
    layers = tuner.gradiend_layers(name)
    k = config.latent_dim
    has_bias = all(name in layer.gradiend_decoder_bias for layer in layers.values())
    encoder_probes = {m: layer.full_encoder(name) for m, layer in layers.items()}
    decoder_probes = {}
    for m, layer in layers.items():
        rows = layer.gradiend_decoder[name].reshape(k, -1)
        if has_bias:
            rows = torch.cat([rows, layer.gradiend_decoder_bias[name].reshape(1, -1)])
        decoder_probes[m] = _weight_shaped(layer, name, rows)
    if config.source == config.target:
        probes = {config.source: {m: torch.cat([encoder_probes[m], decoder_probes[m]]) for m in layers}}
        dots = per_example_dots(tuner, batch, probes, autocast_dtype)[config.source]
        return dots[:, :k], dots[:, k:]
    probes = {config.source: encoder_probes, config.target: decoder_probes}
    dots = per_example_dots(tuner, batch, probes, autocast_dtype)
    return dots[config.source], dots[config.target]


def per_example_losses(tuner: "GradiendModel", adapter_name: str, latents: torch.Tensor,
                       target_dots: torch.Tensor) -> torch.Tensor:
    """Each row's loss less ``s^2 ||T_i||^2`` (see the module docstring), ``(B,)``, for given latents ``(B, k)`` and
    target dot products from `per_example_probe_dots`. Every term is a sum over the modules holding the adapter
    here, so the losses of disjoint module shares add up to the whole adapter's."""
    name = adapter_name
    layers = tuner.gradiend_layers(name)
    k = tuner.peft_config[name].latent_dim
    scale = tuner.gradient_scale(name)
    has_bias = all(name in layer.gradiend_decoder_bias for layer in layers.values())
    device = latents.device
    gram = torch.zeros(k, k, device=device)
    cross = torch.zeros(k, device=device)
    bias_energy = torch.zeros((), device=device)
    for layer in layers.values():
        decoder = layer.gradiend_decoder[name].reshape(k, -1).to(device)
        gram = gram + decoder @ decoder.T
        if has_bias:
            c = layer.gradiend_decoder_bias[name].reshape(-1).to(device)
            cross = cross + decoder @ c
            bias_energy = bias_energy + c @ c
    decoded_energy = torch.einsum("bi,ij,bj->b", latents, gram, latents) + 2 * latents @ cross + bias_energy
    target_dots = target_dots.to(device)
    overlap = (latents * target_dots[:, :k]).sum(dim=1)
    if has_bias:
        overlap = overlap + target_dots[:, k]
    return decoded_energy - 2 * scale * overlap
