"""A LEACE baseline beside GRADIEND's rewrite: erase a feature linearly from a language model's hidden states.

LEACE (least-squares concept erasure, Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form",
EleutherAI's ``concept-erasure`` package, MIT) fits, from representations ``x`` and concept labels ``z``, the affine
map ``r(x) = x - W^+ P W (x - mean)`` of least squared change after which no linear classifier predicts ``z`` from
``r(x)`` better than a constant. The GRADIEND papers compare with INLP/LEACE-style erasure; this module fits LEACE on
the hidden states at the slot of mined rows (the position whose logits predict the feature's word) after chosen
blocks, and applies it to every position's hidden state at those blocks with forward hooks (sequentially fitted:
the eraser of a later block is fitted on states the earlier erasers already changed, as the package's concept
scrubbing does). The model's weights are not changed.

``concept-erasure`` is optional: ``pip install concept-erasure==0.2.4`` (it needs only torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..evaluation._common import as_rows, eval_mode, model_device
from ..evaluation.scoring import logits_of, prepare_slots

__all__ = ["LEACE_INSTALL", "LeaceBaseline", "MissingLeaceError"]

LEACE_INSTALL = "pip install concept-erasure==0.2.4"


class MissingLeaceError(ImportError):
    """The optional ``concept-erasure`` package is not installed."""


def _eraser_class():
    if importlib.util.find_spec("concept_erasure") is None:
        raise MissingLeaceError(f"The LEACE baseline needs EleutherAI's concept-erasure package: {LEACE_INSTALL}")
    from concept_erasure import LeaceEraser

    return LeaceEraser


def block_list(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks: its longest ``nn.ModuleList``."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no block list (nn.ModuleList) to erase hidden states in.")
    return max(lists, key=len)


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


class LeaceBaseline:
    """LEACE erasers for some blocks of a model (see the module docstring).

    Args:
        blocks (`nn.ModuleList`): The model's blocks.
        erasers (`dict[int, Any]`): Block index -> a fitted ``concept_erasure.LeaceEraser``.
        n_rows (`int`): How many rows the erasers were fitted on.
    """

    def __init__(self, blocks: nn.ModuleList, erasers: Mapping[int, Any], n_rows: int) -> None:
        self.blocks = blocks
        self.erasers = dict(erasers)
        self.n_rows = n_rows

    @classmethod
    @torch.no_grad()
    def fit(cls, model: nn.Module, rows: Any, tokenizer: Any, objective: str, layers: Sequence[int],
            classes: Optional[Mapping[str, Sequence[str]]] = None, batch_size: int = 32) -> "LeaceBaseline":
        """Fits one eraser per block in ``layers`` (in increasing order) on the hidden states at each row's slot.

        Args:
            model: the language model (a plain transformers model, or a PEFT model that is neither merged nor
                steered).
            rows: mined rows (``text`` with one ``[MASK]``, ``factual``, ``factual_class``), e.g. training rows.
            tokenizer: the model's tokenizer.
            objective (`str`): ``causal_lm`` or ``masked_lm``.
            layers (`Sequence[int]`): Block indices whose outputs are erased.
            classes (`Mapping[str, Sequence[str]]`, *optional*): ``{class: words}``; default: the rows' words.
            batch_size (`int`): Rows per forward pass.

        Raises:
            `MissingLeaceError`: without the ``concept-erasure`` package (the message has the pip command).
        """
        eraser_class = _eraser_class()
        rows = as_rows(rows)
        slots = prepare_slots(rows, tokenizer, objective, classes=classes, batch_size=batch_size)
        names = sorted({c for c in slots.row_classes if c is not None})
        blocks = block_list(model)
        device = model_device(model)
        baseline = cls(blocks, {}, len(rows))
        for layer in sorted(set(int(i) for i in layers)):
            if not 0 <= layer < len(blocks):
                raise ValueError(f"Block {layer} does not exist: the model has {len(blocks)} blocks.")
            states, features = [], []

            def grab(module, args, output, store=states):
                store.append(_hidden(output).detach())

            handle = blocks[layer].register_forward_hook(grab)
            try:
                with eval_mode(model), baseline.applied():  # the erasers fitted so far act on their blocks
                    for batch in slots.batches:
                        states.clear()
                        logits_of(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                        hidden = states[-1]
                        picked = hidden[torch.arange(hidden.shape[0]), batch["position"].to(hidden.device)]
                        features.append(picked.float().cpu())
            finally:
                handle.remove()
            x = torch.cat(features)
            z = torch.tensor([names.index(slots.row_classes[i]) for b in slots.batches for i in b["index"].tolist()])
            baseline.erasers[layer] = eraser_class.fit(x, torch.nn.functional.one_hot(z, len(names)).float())
        return baseline

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The erasers act on every position's hidden state after their blocks for the duration."""

        def hook_for(eraser):
            def hook(module, args, output):
                hidden = _hidden(output)
                erased = eraser(hidden.float()).to(hidden.dtype)
                return _replace_hidden(output, erased)

            return hook

        handles = [self.blocks[layer].register_forward_hook(hook_for(eraser)) for layer, eraser in self.erasers.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
