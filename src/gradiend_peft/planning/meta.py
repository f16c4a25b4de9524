"""Models without memory: a transformers model built on the meta device from its config, GRADIEND's targets attached
to it (to count ``n`` exactly, with the tuner's own target resolution), and the activations its forward pass saves for
the backward pass (traced on the meta device, where every tensor has a shape and a dtype but no storage).

Nothing here allocates the model's weights or the adapter: a model of any size is planned in seconds on a laptop.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

__all__ = ["TargetInfo", "attach_targets", "load_config", "meta_model", "trace_activations"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def as_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``"bfloat16"``, ``"bf16"``, ``torch.bfloat16``... as a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[str(dtype).lower()]


def load_config(model: Any):
    """The transformers config of ``model``: a config, a model (its ``.config``), an embedded name such as
    ``"smollm2-135m"`` (its cached conversion's ``config.json``), a local folder or a Hub id (when online).

    Raises:
        `ValueError`: for an embedded model that was never converted (naming the call that converts it).
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return copy.deepcopy(model)
    if isinstance(model, nn.Module):
        return copy.deepcopy(model.config)
    from ..embedded_models import EMBEDDED_MODELS, model_cache_dir

    name = str(model)
    if name in EMBEDDED_MODELS:
        folder = model_cache_dir() / name
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"The embedded model {name!r} has not been converted on this machine yet, so its config is not "
                f"cached in {folder}. Run gradiend_peft.embedded_models.load_model_and_tokenizer({name!r}) once (or any "
                "gradiend-peft command with --model " + name + "), then plan again."
            )
        with open(folder / "config.json", encoding="utf-8") as handle:
            data = json.load(handle)
        return AutoConfig.for_model(**data)
    if os.path.isdir(name):
        return AutoConfig.from_pretrained(name)
    return AutoConfig.from_pretrained(name)  # a Hub id; needs network access or the local Hub cache


def meta_model(config, dtype: Union[str, torch.dtype] = torch.float32) -> nn.Module:
    """The language model of ``config`` (causal or masked, as `gradiend_peft.embedded_models` chooses) on the meta device,
    in ``dtype``, parameters and buffers alike, with SDPA attention (what ``from_pretrained`` picks by default)."""
    from accelerate import init_empty_weights

    from ..embedded_models import _auto_class_for

    config = copy.deepcopy(config)
    auto = _auto_class_for(config)
    with init_empty_weights(include_buffers=True):
        try:
            model = auto.from_config(config, attn_implementation="sdpa")
        except (ValueError, ImportError):  # an architecture without SDPA
            model = auto.from_config(config)
    return model.to(as_dtype(dtype)).eval()


@dataclass(frozen=True)
class TargetInfo:
    """One target module: its name, weight shape, entries, block index (``None`` outside the block list), and the
    size of its output per token (what an output gradient of the encoder's per-row pass holds)."""

    name: str
    shape: tuple[int, ...]
    entries: int
    block: Optional[int]
    out_per_token: int


def _block_index(name: str, block_prefix: Optional[str]) -> Optional[int]:
    if not block_prefix or not name.startswith(block_prefix + "."):
        return None
    head = name[len(block_prefix) + 1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def block_list(model: nn.Module) -> tuple[Optional[str], int]:
    """The name and length of the model's transformer block list (the longest ``nn.ModuleList`` of blocks)."""
    best: tuple[Optional[str], int] = (None, 0)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > best[1] and re.search(r"(layers|layer|h|blocks)$", name):
            best = (name, len(module))
    return best


def attach_targets(model: nn.Module, target_modules: Any = None, include_embeddings: bool = False,
                   latent_dim: int = 1, decoder_bias: bool = True):
    """Attaches a GRADIEND adapter to a meta model exactly as ``get_peft_model(model, GradiendConfig(...))`` would
    (``low_cpu_mem_usage=True``: the adapter stays on the meta device too).

    Returns:
        `tuple`: ``(peft_model, targets, block_prefix, num_blocks)``: the targets as `TargetInfo` in module order.
    """
    from peft import get_peft_model

    from ..tuner import GradiendConfig

    config = GradiendConfig(target_modules=target_modules, include_embeddings=include_embeddings,
                            latent_dim=latent_dim, decoder_bias=decoder_bias)
    with _FactoriesOnMeta():  # the layers create their zeros on the CPU before peft moves them to the meta device
        peft_model = get_peft_model(model, config, low_cpu_mem_usage=True)
    prefix, blocks = block_list(peft_model.base_model.model)
    targets = []
    for name, layer in peft_model.base_model.gradiend_layers().items():
        shape = tuple(layer.weight_shape)
        targets.append(TargetInfo(name=name, shape=shape, entries=layer.num_entries("default"),
                                  block=_block_index(name, prefix), out_per_token=int(layer.out_features)))
    return peft_model, targets, prefix, blocks


class _FactoriesOnMeta(TorchFunctionMode):
    """Tensor factories (``torch.zeros``, ``torch.empty``...) create meta tensors, whatever device they are asked for:
    attaching an adapter to a 70B model then allocates nothing, not even one module's zeros at a time."""

    _FACTORIES = (torch.zeros, torch.empty, torch.ones, torch.full, torch.rand, torch.randn, torch.arange)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


class _FlashLikeAttention(torch.autograd.Function):
    """SDPA as the fused kernels (flash, memory-efficient, the CPU flash kernel) run it: the output is computed, and
    what is saved for the backward pass is ``q``, ``k``, ``v``, the output and a float32 log-sum-exp per query, never
    the ``T x T`` attention probabilities the math fallback (the meta device's path) would save."""

    @staticmethod
    def forward(ctx, query, key, value, kwargs):  # noqa: D401 - autograd signature
        with torch.no_grad():  # laid out (B, T, heads, dim) as the fused kernels return it: no copy to merge heads
            output = _ORIGINAL_SDPA(query, key, value, **kwargs).transpose(1, 2).contiguous().transpose(1, 2)
        lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
        ctx.save_for_backward(query, key, value, output, lse)
        return output

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only counts what is saved
        raise RuntimeError("The memory trace runs forward passes only.")


_ORIGINAL_SDPA = F.scaled_dot_product_attention


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    def sdpa(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None:
            kwargs["attn_mask"] = attn_mask
        return _FlashLikeAttention.apply(query, key, value, kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _ORIGINAL_SDPA


def trace_activations(peft_model, weights: Sequence[nn.Parameter], rows: int, seq_len: int,
                      loss_kinds: int = 2, label_positions: int = 1,
                      modules: Sequence[nn.Module] = ()) -> dict[str, int]:
    """Bytes the forward pass of a GRADIEND gradient step saves for its backward pass, traced on the meta device.

    The forward runs as `gradiend_peft.objective.gradients.lm_losses` runs it (LM head on the labelled positions only,
    one cross-entropy per label kind), with ``requires_grad`` on ``weights`` only, under
    ``torch.autograd.graph.saved_tensors_hooks``; saved tensors are grouped by the tensor they view, and the model's
    parameters (which the backward reads in place) are left out. SDPA attention is traced as the fused kernels store
    it (`_FlashLikeAttention`).

    Returns:
        `dict`: ``saved`` (bytes), ``largest`` (the largest single saved tensor, bytes), ``tensors`` (count) and
        ``unsaved_outputs``: the bytes of the outputs of ``modules`` that the graph does not save (the row encoder's
        hooks hold every target's output until its backward pass).
    """
    from ..objective.gradients import head_at_positions

    model = peft_model.base_model.model
    flags = {id(p): p.requires_grad for p in model.parameters()}
    params = {id(p) for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        saved[id(base)] = base
        return tensor

    ids = torch.zeros(rows, seq_len, dtype=torch.long, device="meta")
    positions = torch.zeros(rows, label_positions, dtype=torch.long, device="meta")
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    outputs: dict[int, torch.Tensor] = {}

    def keep(module, args, output):
        if torch.is_tensor(output):
            outputs[id(output)] = output

    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                (_fused_attention() if sdpa else contextlib.nullcontext()), \
                head_at_positions(model, positions, seq_len) as head:
            output = model(input_ids=ids)
            logits = output.logits if hasattr(output, "logits") else output[0]
            picked = logits if head["applied"] else logits[:, :label_positions]
            labels = torch.zeros(rows * label_positions, dtype=torch.long, device="meta")
            for _ in range(loss_kinds):  # per_row_losses: a float32 copy of the labelled logits, a cross-entropy
                F.cross_entropy(picked.reshape(-1, picked.shape[-1]).float(), labels, reduction="none")
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), False))
    sizes = [t.numel() * t.element_size() for key, t in saved.items() if key not in params]
    unsaved = sum(t.numel() * t.element_size() for key, t in outputs.items() if key not in saved)
    return {"saved": int(sum(sizes)), "largest": int(max(sizes, default=0)), "tensors": len(sizes),
            "unsaved_outputs": int(unsaved)}
