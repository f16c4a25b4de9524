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

Module sharding (``shard``, see `gradiend_peft.objective.sharded.Shard`): every quantity above is a sum over target
modules. With ``shard=None`` (the default) the tuner holds the whole adapter and the sums are complete. With a shard,
the tuner holds this process's modules only, and the same functions compute this process's partial sums; the encoder
dot products (``k`` numbers per row group or row) are summed over the shard's processes (a differentiable all-reduce,
so the backward reaches every process's encoder), and the returned loss is this process's part of a loss that is the
sum over the processes. A process whose base-model gradients are not finite takes part in the all-reduce with NaN, so
that every process raises together instead of waiting for the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

import torch

from .gradients import NonFiniteGradientError, batch_gradients, per_example_dots

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel
    from .sharded import Shard

__all__ = ["calibrate", "per_example_reconstruction_loss", "reconstruction_loss"]

_T = TypeVar("_T")


def computed(shard: Optional["Shard"], compute: Callable[[], _T]) -> tuple[Optional[_T], Optional[Exception]]:
    """``(compute(), None)``; with a shard, a `NonFiniteGradientError` is returned as ``(None, error)`` instead of
    raised, so that this process still takes part in the shard's all-reduce (which then raises on every process)."""
    if shard is None:
        return compute(), None
    try:
        return compute(), None
    except NonFiniteGradientError as err:
        return None, err


def summed(shard: Optional["Shard"], partial: Optional[torch.Tensor], failure: Optional[Exception], shape: tuple,
           device: torch.device, what: str) -> torch.Tensor:
    """``partial`` summed over the shard's processes (differentiably; NaN where this process failed); ``partial``
    itself without a shard."""
    if shard is None:
        return partial
    if partial is None:
        partial = torch.full(shape, math.nan, device=device)
    return shard.sum(partial, failure, what)


def _calibrate_on(tuner: "GradiendModel", name: str, gradients: Optional[Mapping[str, torch.Tensor]],
                  shard: Optional["Shard"], failure: Optional[Exception]) -> None:
    if not tuner.peft_config[name].normalize_gradients or float(tuner.gradiend_gradient_scale[name]) > 0:
        return
    if shard is None:
        tuner.calibrate_gradient_scale(gradients, name)
    else:
        shard.calibrate(tuner, name, gradients, failure)


def calibrate(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
              autocast_dtype: Optional[torch.dtype] = None, shard: Optional["Shard"] = None) -> float:
    """Calibrates the gradient scale ``s = 1 / RMS`` on a row group's ``source`` gradient if that has not happened
    yet (see `GradiendModel.calibrate_gradient_scale`); returns ``s``.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): A collated row group.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.
        shard (`Shard`, *optional*): This process's share of a module-sharded adapter: the RMS is taken over all the
            processes' entries (one all-reduce of two numbers); every process of the shard calls it with the same
            row group.
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    if config.normalize_gradients and not float(tuner.gradiend_gradient_scale[name]) > 0:
        held = list(tuner.gradiend_layers(name))
        grads, failure = computed(shard, lambda: batch_gradients(tuner, batch, [config.source], autocast_dtype,
                                                                 held)[config.source])
        _calibrate_on(tuner, name, grads, shard, failure)
    return tuner.gradient_scale(name)


def reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None, shard: Optional["Shard"] = None,
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
        shard (`Shard`, *optional*): This process's share of a module-sharded adapter (see the module docstring);
            every process of the shard calls it with the same row group.

    Returns:
        `tuple`: ``(loss, h, n)``: ``sum_m ||d_m(h) - s * target_m||^2`` (differentiable w.r.t. the adapter; with a
        shard, this process's part, the sum over its modules), the latent ``h`` (``(k,)``, the same on every process)
        and the whole adapter's number of entries ``n`` (``loss / n`` is the mean squared error).
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    if shard is None:
        tuner.check_complete(name, "The GRADIEND loss")
    held = list(tuner.gradiend_layers(name))
    grads, failure = computed(shard, lambda: batch_gradients(tuner, batch, [config.source, config.target],
                                                             autocast_dtype, held))
    _calibrate_on(tuner, name, grads[config.source] if grads else None, shard, failure)
    partial = tuner.encoder_dots(grads[config.source], name) if grads else None
    dots = summed(shard, partial, failure, (config.latent_dim,), tuner.gradiend_encoder_bias[name].device,
                  "The encoder's dot product")
    latent = tuner.latent_from_dots(dots, name)
    return tuner.reconstruction_error(latent, grads[config.target], name), latent, tuner.num_entries(name)


def _weight_shaped(layer, adapter_name: str, rows: torch.Tensor) -> torch.Tensor:
    """``(r, n_m)`` or ``(r, *W.shape)`` adapter rows as ``(r, *W.shape)`` (pruned entries zero), differentiably."""
    if not layer.is_pruned(adapter_name):
        return rows.reshape(rows.shape[0], *layer.weight_shape)
    return torch.stack([layer.scatter(adapter_name, row.reshape(-1)) for row in rows])


def per_example_reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None, shard: Optional["Shard"] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The mean over rows of each row's own GRADIEND loss, up to the adapter-independent ``s^2 ||T_i||^2``.

    Args:
        tuner (`GradiendModel`): The tuner (``peft_model.base_model``).
        batch (`Mapping[str, torch.Tensor]`): A collated batch; every row is one sample.
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.
        shard (`Shard`, *optional*): This process's share of a module-sharded adapter (see the module docstring):
            the per-row encoder dot products ``(B, k)`` are summed over its processes, and every other term of a
            row's loss is a sum over modules, so the processes' losses add up to the whole adapter's.

    Returns:
        `tuple`: ``(loss, latents, n)``: the loss (differentiable w.r.t. the adapter; see the module docstring; with
        a shard, this process's part), the per-row latents ``(B, k)`` and the whole adapter's number of entries ``n``.
    """
    name = tuner.resolve_adapter(adapter_name)
    if shard is None:
        tuner.check_complete(name, "The per-example GRADIEND loss")
    dots, failure = computed(shard, lambda: per_example_probe_dots(tuner, batch, name, autocast_dtype))
    rows, k = batch["input_ids"].shape[0], tuner.peft_config[name].latent_dim
    source_dots = summed(shard, dots[0] if dots else None, failure, (rows, k),
                         tuner.gradiend_encoder_bias[name].device, "The encoder's per-row dot products")
    latents = tuner.latent_from_dots(source_dots, name)  # (B, k)
    return per_example_losses(tuner, name, latents, dots[1]).mean(), latents, tuner.num_entries(name)


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
