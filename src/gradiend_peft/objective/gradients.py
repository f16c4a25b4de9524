"""The gradient engine: the base model's gradients that GRADIEND encodes and reconstructs (computed from rows;
the tuner only ever sees the resulting module-shaped gradients).

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
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..tuner.constants import IGNORE_INDEX
from ..tuner.numerics import linear_per_example_dot

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel

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


def max_positions(model: nn.Module) -> Optional[int]:
    """The most tokens the model takes (``max_position_embeddings`` or ``n_positions`` of its config), if recorded."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocabulary_rows(model: nn.Module) -> Optional[int]:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if getter is not None else None
    if embedding is None:
        return None
    if hasattr(embedding, "get_base_layer"):
        embedding = embedding.get_base_layer()
    weight = getattr(embedding, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def check_inputs_fit(model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> None:
    """Refuses input the model cannot embed, naming the batch row: more tokens than its positions, or token ids
    beyond its vocabulary (a tokenizer that does not belong to the model).

    Raises:
        `ValueError`: naming the row, the size and the fix.
    """
    limit = max_positions(model)
    if limit is not None and input_ids.shape[-1] > limit:
        row = int(torch.argmax(attention_mask.sum(dim=-1))) if attention_mask is not None else 0
        raise ValueError(
            f"Batch row {row} is {input_ids.shape[-1]} tokens long, more than the {limit} positions of the model. "
            "Drop long rows, or truncate them (collator_for(..., max_length=..., truncation=True); "
            "GradiendTrainingArguments(truncate_long_rows=True); max_length= in the evaluation functions)."
        )
    rows = _vocabulary_rows(model)
    if rows is not None and input_ids.numel() and int(input_ids.max()) >= rows:
        bad = int(torch.nonzero(input_ids >= rows)[0][0])
        raise ValueError(
            f"Batch row {bad} holds token id {int(input_ids.max())}, but the model's embedding has {rows} rows: the "
            "tokenizer does not belong to this model. Load the tokenizer that was saved with the model."
        )


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": batch["input_ids"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def label_positions(labels: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions labelled in any of ``labels`` (each ``(B, T)``), per row, left-aligned: ``(positions, valid)``,
    both ``(B, P)`` with ``P`` the most labels of any row; padding repeats the row's first position (``valid`` False).
    """
    labels = list(labels)
    mask = torch.zeros_like(labels[0], dtype=torch.bool)
    for tensor in labels:
        mask |= tensor != IGNORE_INDEX
    counts = mask.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return torch.where(valid, order, order[:, :1]), valid


@contextlib.contextmanager
def head_at_positions(model: nn.Module, positions: torch.Tensor, seq_len: int) -> Iterator[dict]:
    """Runs the output embedding (the LM head) on the hidden states at ``positions`` only, so that the logits are
    ``(B, P, V)`` instead of ``(B, T, V)``. Only labelled positions enter the losses, so their gradients are the
    same; the head's matmul, its softmax and their backward shrink by ``T / P``. Yields ``{"applied": bool}``:
    False when the model has no output embedding or calls it on an unexpected shape (then nothing changes).
    """
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    state = {"applied": False}
    if head is None or positions.shape[1] == 0:
        yield state
        return

    def pre_hook(module: nn.Module, args: tuple) -> Optional[tuple]:
        hidden = args[0] if args else None
        if (state["applied"] or not torch.is_tensor(hidden) or hidden.dim() != 3
                or tuple(hidden.shape[:2]) != (positions.shape[0], seq_len)):
            return None
        index = positions.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        state["applied"] = True
        return (hidden.gather(1, index),) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield state
    finally:
        handle.remove()


def autocast_context(dtype: Optional[torch.dtype], device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_losses(model: nn.Module, batch: Mapping[str, torch.Tensor], kinds: Iterable[str],
              autocast_dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """One forward pass; the per-row losses ``(B,)`` for each label kind in ``kinds``.

    The LM head runs on the labelled positions only (`head_at_positions`): the losses and every gradient are those
    of the full logits, at a fraction of the head's cost. With ``autocast_dtype`` (e.g. ``torch.bfloat16``) the base
    model's forward runs under ``torch.autocast`` (and so its backward); the losses are computed in float32.
    """
    labels = {kind: batch[KIND_TO_LABEL_KEY[kind]] for kind in kinds}
    positions, valid = label_positions(labels.values())
    check_inputs_fit(model, batch["input_ids"], batch.get("attention_mask"))
    with head_at_positions(model, positions, batch["input_ids"].shape[1]) as state, \
            autocast_context(autocast_dtype, batch["input_ids"].device):
        output = model(**model_inputs(batch))
    logits = output.logits if hasattr(output, "logits") else output[0]
    if state["applied"]:
        labels = {
            kind: torch.where(valid, tensor.gather(1, positions), torch.full_like(positions, IGNORE_INDEX))
            for kind, tensor in labels.items()
        }
    return {kind: per_row_losses(logits, labels[kind].to(logits.device)) for kind in kinds}


@contextlib.contextmanager
def gradient_pass(tuner: "GradiendModel", weights: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode, no steering, and ``requires_grad`` on ``weights`` for the duration; all restored after."""
    tuner.check_unmerged("Computing the base model's gradients (training, encoding, evaluation)")
    model = tuner.model
    training = {module: module.training for module in model.modules()}
    flags = [w.requires_grad for w in weights]
    steering = {name: layer.steering_state() for name, layer in tuner.gradiend_layers().items()}
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
            layer.restore_steering(steering[name])
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
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], kinds: Iterable[str],
    autocast_dtype: Optional[torch.dtype] = None, modules: Optional[Iterable[str]] = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of the batch-mean loss w.r.t. every target weight, for each requested kind.

    Args:
        tuner (`GradiendModel`): The tuner whose target modules define the weights.
        batch (`Mapping[str, torch.Tensor]`): A collated batch (see the module docstring).
        kinds (`Iterable[str]`): Any of ``factual``, ``alternative``, ``diff``.
        autocast_dtype (`torch.dtype`, *optional*): Run the base model's forward under ``torch.autocast`` to this
            dtype (mixed precision); ``None``: as stored.
        modules (`Iterable[str]`, *optional*): Only these target modules (one process's share of a module-sharded
            adapter: autograd then skips the other weights' gradients); default every GRADIEND layer.

    Returns:
        `dict[str, dict[str, torch.Tensor]]`: kind -> module name -> gradient shaped like the weight (at least fp32).
        Tied weights (one tensor targeted through an embedding and used again by the LM head) get the
        gradient of both uses, as plain autograd gives it.
    """
    kinds = list(dict.fromkeys(kinds))
    layers = tuner.gradiend_layers()
    if modules is not None:
        wanted = set(modules)
        unknown = sorted(wanted - set(layers))
        if unknown:
            raise KeyError(f"No GRADIEND layer for modules {unknown[:5]}.")
        layers = {name: layer for name, layer in layers.items() if name in wanted}
    names = list(layers)
    weights = [layers[name].get_base_layer().weight for name in names]
    unique = list({id(w): w for w in weights}.values())
    position = {id(w): i for i, w in enumerate(unique)}
    result: dict[str, dict[str, torch.Tensor]] = {}
    with gradient_pass(tuner, unique):
        losses = lm_losses(tuner.model, batch, sorted(required_kinds(*kinds)), autocast_dtype)
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


def per_example_dots(
    tuner: "GradiendModel",
    batch: Mapping[str, torch.Tensor],
    probes: Mapping[str, Mapping[str, torch.Tensor]],
    autocast_dtype: Optional[torch.dtype] = None,
) -> dict[str, torch.Tensor]:
    """``sum_m <P_m,j, G_m,i>`` per row ``i`` for probe tensors ``P``, from one forward and one backward pass per
    gradient kind, without forming the per-example gradients ``G_i``.

    Each target module's forward input ``x`` and output ``y`` are captured; the backward pass of the sum of the
    rows' losses gives ``dL/dy`` (rows do not interact, so row ``i``'s part is row ``i``'s own gradient), and each
    layer turns ``(x, dL/dy)`` into ``<P_j, G_i>``. The result is differentiable w.r.t. the probes (used to train on
    per-example samples). Gradients are not scaled here.

    Args:
        tuner (`GradiendModel`): The tuner whose target modules define the weights.
        batch (`Mapping[str, torch.Tensor]`): A collated batch.
        probes (`Mapping[str, Mapping[str, torch.Tensor]]`): gradient kind (``factual``, ``alternative``, ``diff``)
            -> target module name -> probe of shape ``(k', *W.shape)`` (the same ``k'`` for all modules of a kind);
            modules left out contribute nothing.
        autocast_dtype (`torch.dtype`, *optional*): Run the base model's forward under ``torch.autocast``.

    Returns:
        `dict[str, torch.Tensor]`: kind -> ``(B, k')`` dot products.
    """
    all_layers = tuner.gradiend_layers()
    wanted = {name for kind_probes in probes.values() for name in kind_probes}
    layers = {name: layer for name, layer in all_layers.items() if name in wanted}
    tied = tuner.tied_heads()
    captured: list[tuple[str, bool, torch.Tensor, torch.Tensor]] = []

    def capture(name: str, is_head: bool):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured.append((name, is_head, args[0].detach(), output))

        return hook

    handles = [layer.get_base_layer().register_forward_hook(capture(name, False)) for name, layer in layers.items()]
    handles += [head.register_forward_hook(capture(name, True)) for name, head in tied.items() if name in layers]
    weights = list({id(w): w for w in (layer.get_base_layer().weight for layer in layers.values())}.values())
    kinds = list(probes)
    output_grads: dict[str, tuple] = {}
    try:
        with gradient_pass(tuner, weights):
            losses = lm_losses(tuner.model, batch, sorted(required_kinds(*kinds)), autocast_dtype)
            outputs = [out for *_, out in captured]
            for i, kind in enumerate(kinds):
                total = (losses["factual"] - losses["alternative"]).sum() if kind == "diff" else losses[kind].sum()
                output_grads[kind] = torch.autograd.grad(
                    total, outputs, retain_graph=i < len(kinds) - 1, allow_unused=True
                )
    finally:
        for handle in handles:
            handle.remove()
    results: dict[str, torch.Tensor] = {}
    for kind in kinds:
        dots = None
        for (name, is_head, inputs, _), output_grad in zip(captured, output_grads[kind]):
            if output_grad is None or name not in probes[kind]:
                continue
            if not torch.isfinite(output_grad).all():
                raise NonFiniteGradientError(
                    f"The {kind} gradient reaching module {name!r} contains NaN or infinite values."
                )
            probe = probes[kind][name]
            layer = layers[name]
            if is_head:
                part = linear_per_example_dot(probe, inputs, output_grad, "out_in")
            else:
                part = layer.per_example_dot(probe, inputs, output_grad)
            dots = part if dots is None else dots + part.to(dots.device)
        if dots is None:
            raise ValueError(f"No probe of kind {kind!r} reached a target module; check the probe names.")
        results[kind] = dots
    return results


def per_example_encoder_dots(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], kind: str, adapter_name: str,
    autocast_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``sum_m <E_m, g_m,i>`` per row ``i`` for the gradient ``kind`` (unscaled), shape ``(B, k)``, over the modules
    holding the adapter here; see `per_example_dots`.

    The encoder enters detached, so the result carries no graph: no module's float32 projection (nor, with a
    half-precision base, its float32 input and output gradient) is kept until the last module is done. The
    per-example loss, which trains the encoder, calls `per_example_dots` with the encoder itself.
    """
    probes = {name: layer.full_encoder(adapter_name).detach()
              for name, layer in tuner.gradiend_layers(adapter_name).items()}
    return per_example_dots(tuner, batch, {kind: probes}, autocast_dtype)[kind]
