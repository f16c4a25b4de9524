"""Composing edit directions from several GRADIEND adapters of one model.

A GRADIEND rewrite moves the weights along ``d(ff) / s = (ff D + c) / s`` (raw-gradient units). Two adapters trained on
different rows of the same feature learn different directions: one trained on rows whose context decides the class
learns the *definitional* direction, one trained on rows whose context only goes along with a class (an attribute
associated with it) learns a direction that also carries that association. `project_out` removes from one adapter's
direction its component along other adapters' directions, the way hard debiasing neutralises associated words but
not definitional ones: with ``v`` the edited adapter's direction
and ``u_1..u_m`` an orthonormal basis (Gram-Schmidt, over all target entries jointly) of the other directions,
``v' = v - sum_i <v, u_i> u_i``. To first order the projected edit leaves unchanged every loss whose gradient lies in
the span of the ``u_i``.

`combine_edits` writes several adapters' rewrites, each with its own feature factor and learning rate, into one new
adapter whose rewrite at ``feature_factor=0, lr=1`` is their sum: one adapter to measure, steer, save or merge.

Only weight-space maths on the adapters' tensors; nothing here computes gradients.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tuner.model import tuner_of

__all__ = ["Projection", "combine_edits", "decoder_directions", "project_out"]


def decoder_directions(model: Any, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's decoder directions in raw-gradient units, weight-shaped per target module: ``{"bias": c / s}``
    and ``{"weight_j": D_j / s}`` for each latent dimension ``j`` (float64 copies)."""
    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    scale = tuner.gradient_scale(name)
    directions: dict[str, dict[str, torch.Tensor]] = {}
    for module, layer in tuner.gradiend_layers(name).items():
        decoder = layer.gradiend_decoder[name].detach().double()
        for j in range(decoder.shape[0]):
            directions.setdefault(f"weight_{j}", {})[module] = layer.scatter(name, decoder[j].reshape(-1)) / scale
        if name in layer.gradiend_decoder_bias:
            bias = layer.gradiend_decoder_bias[name].detach().double().reshape(-1)
            directions.setdefault("bias", {})[module] = layer.scatter(name, bias) / scale
    return directions


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return sum(float((a[m] * b[m]).sum()) for m in a if m in b)


@dataclass(frozen=True)
class Projection:
    """What `project_out` did.

    Attributes:
        cosines (`dict[str, list[float]]`): For each projected component of the edited adapter (``bias``,
            ``weight_0``...), its cosine with each basis direction, before projection.
        kept_norm (`dict[str, float]`): ``||v'|| / ||v||`` per component.
        basis (`list[str]`): The basis directions, as ``"<adapter>:<component>"``, in Gram-Schmidt order.
    """

    cosines: dict[str, list[float]]
    kept_norm: dict[str, float]
    basis: list[str]


@torch.no_grad()
def project_out(model: Any, adapter_name: str, against: Sequence[str],
                components: Sequence[str] = ("bias",), against_components: Sequence[str] = ("weight_0", "bias"),
                drop_weight: bool = False) -> Projection:
    """Removes from ``adapter_name``'s decoder ``components`` their parts along the decoder directions of the
    adapters ``against`` (see the module docstring), in place.

    Args:
        model: a PeftModel (or its `GradiendModel`) holding all the adapters, on the same base weights.
        adapter_name (`str`): the adapter whose edit direction is projected.
        against (`Sequence[str]`): adapters whose directions are removed (e.g. one trained on definitional rows).
        components (`Sequence[str]`): which of ``adapter_name``'s components to project: ``bias`` (``c``, the edit
            of ``feature_factor=0``) and/or ``weight_<j>``.
        against_components (`Sequence[str]`): which components of the ``against`` adapters span the removed space.
        drop_weight (`bool`): also set ``adapter_name``'s decoder weight ``D`` to zero, so that every feature factor
            decodes to the projected bias alone.

    Returns:
        `Projection`: cosines before, the norm kept, the basis.

    Raises:
        `ValueError`: for an unmerged-state violation, an adapter without the requested component, or adapters whose
            targets differ.
    """
    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    tuner.check_unmerged("project_out")
    own = decoder_directions(tuner, name)
    basis: list[dict[str, torch.Tensor]] = []
    labels: list[str] = []
    for other in against:
        directions = decoder_directions(tuner, tuner.resolve_adapter(other))
        if set(next(iter(directions.values()))) != set(next(iter(own.values()))):
            raise ValueError(f"Adapters {name!r} and {other!r} target different modules; project between adapters "
                             "of the same targets.")
        for component in against_components:
            if component not in directions:
                raise ValueError(f"Adapter {other!r} has no decoder {component!r}.")
            vector = dict(directions[component])
            for unit in basis:
                coefficient = _dot(vector, unit)
                vector = {m: t - coefficient * unit[m] for m, t in vector.items()}
            norm = math.sqrt(_dot(vector, vector))
            if norm > 0:
                basis.append({m: t / norm for m, t in vector.items()})
                labels.append(f"{other}:{component}")
    cosines, kept = {}, {}
    layers = tuner.gradiend_layers(name)
    scale = tuner.gradient_scale(name)
    for component in components:
        if component not in own:
            raise ValueError(f"Adapter {name!r} has no decoder {component!r}.")
        vector = own[component]
        length = math.sqrt(_dot(vector, vector))
        cosines[component] = [_dot(vector, unit) / length if length else 0.0 for unit in basis]
        projected = dict(vector)
        for unit in basis:
            coefficient = _dot(projected, unit)
            projected = {m: t - coefficient * unit[m] for m, t in projected.items()}
        kept[component] = math.sqrt(_dot(projected, projected)) / length if length else 0.0
        for module, layer in layers.items():
            values = layer.select(name, projected[module]) * scale
            if component == "bias":
                target = layer.gradiend_decoder_bias[name]
                target.copy_(values.reshape(target.shape).to(target.dtype))
            else:
                target = layer.gradiend_decoder[name]
                j = int(component.split("_")[1])
                target[j].copy_(values.reshape(target[j].shape).to(target.dtype))
    if drop_weight:
        for layer in layers.values():
            layer.gradiend_decoder[name].zero_()
    return Projection(cosines=cosines, kept_norm=kept, basis=labels)


@torch.no_grad()
def combine_edits(model: Any, edits: Mapping[str, tuple[float, float]], adapter_name: str) -> str:
    """Adds the adapter ``adapter_name`` whose rewrite at ``feature_factor=0, lr=1`` equals the sum of the rewrites
    ``lr_i * d_i(ff_i) / s_i`` of ``edits`` (adapter -> ``(feature_factor, lr)``), in every target weight.

    The new adapter has the targets of the edits' adapters, no gradient normalisation (``s = 1``), a zero decoder
    weight and the summed shift as its decoder bias, so ``model.merge_and_unload(feature_factor=0, lr=1,
    adapter_names=[adapter_name])`` writes all the edits at once and ``lr=0.5`` half of each. Its encoder is not
    trained: it is for rewriting, not for encoding.

    Args:
        model (`peft.PeftModel`): the model holding the adapters (unmerged).
        edits (`Mapping[str, tuple[float, float]]`): adapter name -> ``(feature_factor, lr)``.
        adapter_name (`str`): the new adapter's name (not in use).

    Returns:
        `str`: ``adapter_name``.

    Raises:
        `ValueError`: for no edits, a name in use, adapters with different targets, a pruned adapter (its entries
            differ from the others'), a non-finite shift, or a merged model.
        `TypeError`: for anything but a `peft.PeftModel` (its tuner alone cannot add an adapter).
    """
    tuner = tuner_of(model)
    if not edits:
        raise ValueError("combine_edits needs at least one edit: {adapter_name: (feature_factor, lr)}.")
    if adapter_name in tuner.peft_config:
        raise ValueError(f"Adapter {adapter_name!r} exists already; choose another name for the combined edit.")
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError("combine_edits adds an adapter: pass the peft.PeftModel (get_peft_model's result).")
    tuner.check_unmerged("combine_edits")
    names = [tuner.resolve_adapter(name) for name in edits]
    targets = set(tuner.gradiend_layers(names[0]))
    for name in names:
        layers = tuner.gradiend_layers(name)
        if set(layers) != targets:
            raise ValueError(f"Adapters {names[0]!r} and {name!r} target different modules; combine adapters of the "
                             "same targets.")
        if any(layer.is_pruned(name) for layer in layers.values()):
            raise ValueError(f"Adapter {name!r} is pruned; combine unpruned adapters (their entries must be the same).")
    shifts: dict[str, torch.Tensor] = {}
    for name in names:
        factor, lr = edits[name]
        if not (math.isfinite(float(lr)) and all(math.isfinite(float(f)) for f in torch.as_tensor(factor).reshape(-1))):
            raise ValueError(f"The edit of {name!r} must have a finite feature factor and lr, got {(factor, lr)!r}.")
        scale = tuner.gradient_scale(name)
        for module, layer in tuner.gradiend_layers(name).items():
            delta = layer.delta_weight(name, factor, float(lr), scale).double()
            shifts[module] = delta if module not in shifts else shifts[module] + delta
    if not all(bool(torch.isfinite(t).all()) for t in shifts.values()):
        raise ValueError("The combined shift is not finite; use smaller learning rates.")
    config = copy.deepcopy(tuner.peft_config[names[0]])
    config.normalize_gradients, config.inference_mode, config.decoder_bias = False, False, True
    model.add_adapter(adapter_name, config)
    for module, layer in tuner.gradiend_layers(adapter_name).items():
        layer.gradiend_decoder[adapter_name].zero_()
        bias = layer.gradiend_decoder_bias[adapter_name]
        bias.copy_(layer.select(adapter_name, shifts[module]).reshape(bias.shape).to(bias.dtype))
    return adapter_name
