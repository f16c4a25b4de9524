"""The gradient engine: the base model's gradients that GRADIEND encodes and reconstructs.

A batch (see `gradiend_peft.data.collators`) holds ``input_ids``, ``attention_mask`` and two label tensors,
``factual_labels`` and ``alternative_labels``, that are ``-100`` except where the logits at that position must
predict the label token. The labels are never shifted here: the collator already placed them (masked LM: at
the mask tokens; causal LM: at the last position of the prefix). A row's loss is the mean cross-entropy over its
labelled positions.

Two modes, both from ONE forward pass:

- `batch_gradients`: the gradient of the batch-mean loss w.r.t. every target weight, one backward pass per
  gradient kind needed (the reference semantics: one GRADIEND sample per row group);
- `per_example_encoder_dots`: ``<E_j, g_i>`` for every row ``i`` from the activations and output gradients of
  one backward pass over the whole batch (``G_i = sum_t delta_it x_it^T`` for a linear layer), so that many
  rows are encoded at the cost of one backward pass, and per-example gradients are never formed.

Neither mode builds the flat n-vector; gradients stay module-shaped. Base weights get ``requires_grad`` only
for the pass and have it restored; the model runs in eval mode (no dropout) and without steering.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .tuner.layer import Embedding, GradiendLayer, linear_per_example_dot

if TYPE_CHECKING:
    from .tuner.model import GradiendModel

IGNORE_INDEX = -100
KIND_TO_LABEL_KEY = {"factual": "factual_labels", "alternative": "alternative_labels"}


class NonFiniteGradientError(FloatingPointError):
    """Raised when a base-model gradient contains NaN or infinite values."""


def required_kinds(*kinds: str) -> set[str]:
    """The label kinds (``factual``/``alternative``) needed to form the given gradient kinds."""
    needed: set[str] = set()
    for kind in kinds:
        needed.update(("factual", "alternative") if kind == "diff" else (kind,))
    return needed


def per_row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each row's labelled positions (``labels != -100``), shape ``(B,)``.

    Only the labelled positions' logits enter the softmax, so the cost does not grow with the sequence length.
    """
    mask = labels != IGNORE_INDEX
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"Rows {empty} of the batch have no label position; every row needs one (check the collator).")
    rows, positions = torch.nonzero(mask, as_tuple=True)
    token_losses = F.cross_entropy(_upcast(logits[rows, positions]), labels[rows, positions], reduction="none")
    sums = torch.zeros(labels.shape[0], dtype=token_losses.dtype, device=token_losses.device)
    sums = sums.index_add(0, rows, token_losses)
    return sums / counts.to(sums.dtype)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": batch["input_ids"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def lm_losses(model: nn.Module, batch: Mapping[str, torch.Tensor], kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """One forward pass; the per-row losses ``(B,)`` for each label kind in ``kinds``."""
    output = model(**model_inputs(batch))
    logits = output.logits if hasattr(output, "logits") else output[0]
    return {kind: per_row_losses(logits, batch[KIND_TO_LABEL_KEY[kind]].to(logits.device)) for kind in kinds}


@contextlib.contextmanager
def gradient_pass(tuner: "GradiendModel", weights: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode, no steering, and ``requires_grad`` on ``weights`` for the duration; all restored after."""
    model = tuner.model
    training = {module: module.training for module in model.modules()}
    flags = [w.requires_grad for w in weights]
    steering = {name: dict(layer._steering) for name, layer in tuner.gradiend_layers().items()}
    model.eval()
    for layer in tuner.gradiend_layers().values():
        layer.clear_steering()
    try:
        for weight in weights:
            weight.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for weight, flag in zip(weights, flags):
            weight.requires_grad_(flag)
        for name, layer in tuner.gradiend_layers().items():
            layer._steering.update(steering[name])
        for module, mode in training.items():
            module.training = mode


def _check_finite(gradients: dict[str, torch.Tensor], kind: str) -> None:
    for name, grad in gradients.items():
        if not torch.isfinite(grad).all():
            raise NonFiniteGradientError(
                f"The {kind} gradient of module {name!r} contains NaN or infinite values. Check the inputs and the "
                "base model (a bf16/fp16 base may overflow: try float32)."
            )


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 bases), float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def batch_gradients(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], kinds: Iterable[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of the batch-mean loss w.r.t. every target weight, for each requested kind.

    Args:
        tuner (`GradiendModel`): The tuner whose target modules define the weights.
        batch (`Mapping[str, torch.Tensor]`): A collated batch (see the module docstring).
        kinds (`Iterable[str]`): Any of ``factual``, ``alternative``, ``diff``.

    Returns:
        `dict[str, dict[str, torch.Tensor]]`: kind -> module name -> gradient shaped like the weight (at least fp32).
        Tied weights (one tensor targeted through an embedding and used again by the LM head) get the
        gradient of both uses, as plain autograd gives it.
    """
    kinds = list(dict.fromkeys(kinds))
    layers = tuner.gradiend_layers()
    names = list(layers)
    weights = [layers[name].get_base_layer().weight for name in names]
    unique = list({id(w): w for w in weights}.values())
    position = {id(w): i for i, w in enumerate(unique)}
    result: dict[str, dict[str, torch.Tensor]] = {}
    with gradient_pass(tuner, unique):
        losses = lm_losses(tuner.model, batch, sorted(required_kinds(*kinds)))
        objectives = {}
        for kind in kinds:
            if kind == "diff":
                objectives[kind] = (losses["factual"] - losses["alternative"]).mean()
            else:
                objectives[kind] = losses[kind].mean()
        for i, kind in enumerate(kinds):
            grads = torch.autograd.grad(objectives[kind], unique, retain_graph=i < len(kinds) - 1)
            result[kind] = {name: _upcast(grads[position[id(w)]]) for name, w in zip(names, weights)}
            _check_finite(result[kind], kind)
    return result


def _tied_heads(tuner: "GradiendModel") -> dict[str, nn.Module]:
    """Target embeddings whose weight tensor is also used by another (untargeted) module, e.g. the LM head."""
    tied: dict[str, nn.Module] = {}
    layers = tuner.gradiend_layers()
    targeted = {id(layer.get_base_layer()) for layer in layers.values()}
    for name, layer in layers.items():
        if not isinstance(layer, Embedding):
            continue
        weight = layer.get_base_layer().weight
        for module in tuner.model.modules():
            if id(module) in targeted or isinstance(module, GradiendLayer) or module is layer.get_base_layer():
                continue
            if getattr(module, "weight", None) is weight:
                if not isinstance(module, nn.Linear):
                    raise NotImplementedError(
                        f"The embedding {name!r} shares its weight with a {type(module).__name__}; only a tied "
                        "nn.Linear LM head is supported by the per-example engine."
                    )
                tied[name] = module
    return tied


def per_example_encoder_dots(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], kind: str, adapter_name: str
) -> torch.Tensor:
    """``sum_m <E_m, g_m,i>`` per row ``i`` for the gradient ``kind``, from one backward pass: shape ``(B, k)``.

    Each target module's forward input ``x`` and output ``y`` are captured; one backward pass of the sum of the
    rows' losses gives ``dL/dy`` (rows do not interact, so row ``i``'s part is row ``i``'s own gradient), and each
    layer turns ``(x, dL/dy)`` into ``<E, G_i>`` without forming ``G_i``. The gradients are not scaled here.
    """
    layers = tuner.gradiend_layers()
    layers = {name: layer for name, layer in layers.items() if adapter_name in layer.gradiend_encoder}
    tied = _tied_heads(tuner)
    captured: list[tuple[str, bool, torch.Tensor, torch.Tensor]] = []

    def capture(name: str, is_head: bool):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured.append((name, is_head, args[0].detach(), output))

        return hook

    handles = [layer.get_base_layer().register_forward_hook(capture(name, False)) for name, layer in layers.items()]
    handles += [head.register_forward_hook(capture(name, True)) for name, head in tied.items() if name in layers]
    weights = list({id(w): w for w in (layer.get_base_layer().weight for layer in layers.values())}.values())
    try:
        with gradient_pass(tuner, weights):
            losses = lm_losses(tuner.model, batch, sorted(required_kinds(kind)))
            total = (losses["factual"] - losses["alternative"]).sum() if kind == "diff" else losses[kind].sum()
            output_grads = torch.autograd.grad(total, [out for *_, out in captured], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    batch_size = batch["input_ids"].shape[0]
    k = tuner.peft_config[adapter_name].latent_dim
    dtype = tuner.gradiend_encoder_bias[adapter_name].dtype
    dots = torch.zeros(batch_size, k, dtype=dtype, device=batch["input_ids"].device)
    for (name, is_head, inputs, _), output_grad in zip(captured, output_grads):
        if output_grad is None:
            continue
        if not torch.isfinite(output_grad).all():
            raise NonFiniteGradientError(f"The {kind} gradient reaching module {name!r} contains NaN or infinite values.")
        layer = layers[name]
        if is_head:
            part = linear_per_example_dot(layer.full_encoder(adapter_name), inputs, output_grad, "out_in")
        else:
            part = layer.per_example_dot(adapter_name, inputs, output_grad)
        dots = dots + part.to(dots.device, dots.dtype)
    return dots
