"""Skipping the blocks an edit cannot change.

A rewrite ``theta + lr * d(feature_factor)`` changes only the targeted modules. When every target sits in blocks
``L..N-1`` of one block list (SmolLM2's demo adapter: blocks 20-29 of 30), every candidate of a rewrite search
computes the same hidden states entering block ``L``. `BlockSkip` computes them once per prepared batch (the base
model, below the first edited block, is the edited model there too) and then runs each candidate from block ``L``
on: the model is called with those hidden states as ``inputs_embeds`` while blocks ``0..L-1`` are swapped for
modules that pass their input through.

That relies on the model adding nothing to ``inputs_embeds`` before its first block (Llama, Mistral, Qwen, Gemma: the
embedding scale of Gemma lives in its embedding module) and on its blocks returning the hidden states as a tensor.
`BlockSkip.verified` checks it on real batches, comparing the skipping forward with the full one; the search falls
back to full forward passes where they differ (GPT-2 adds position embeddings to ``inputs_embeds``; BERT's
embedding module normalises them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["BlockSkip"]


class _Stop(Exception):
    """Ends a capture pass once the first edited block's input is known."""


class _Passthrough(nn.Module):
    """Stands in for a skipped block: returns the hidden states it is given."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class BlockSkip:
    """The block list holding every target of an adapter, and the first block the adapter edits.

    Args:
        blocks (`nn.ModuleList`): The model's block list (e.g. ``model.model.layers``).
        first (`int`): The first block index holding a target; blocks below it are never edited.
    """

    def __init__(self, blocks: nn.ModuleList, first: int) -> None:
        self.blocks = blocks
        self.first = first

    @classmethod
    def find(cls, tuner: Any, adapter_name: str) -> Optional["BlockSkip"]:
        """The skip for ``adapter_name``'s targets, or ``None`` when there is nothing to skip (a target outside the
        block lists, e.g. an embedding, or a target in the first block)."""
        targets = list(tuner.gradiend_layers(adapter_name))
        for prefix, module in tuner.model.named_modules():
            if not isinstance(module, nn.ModuleList) or len(module) < 2:
                continue
            indices = []
            for name in targets:
                rest = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else None
                head = rest.split(".", 1)[0] if rest else ""
                if not head.isdigit():
                    break
                indices.append(int(head))
            else:
                if indices and min(indices) > 0:
                    return cls(module, min(indices))
        return None

    @torch.no_grad()
    def capture(self, model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The hidden states entering block ``first`` for every batch (one forward up to that block each)."""
        from .scoring.forward import logits_of

        hidden: list[torch.Tensor] = []

        def grab(module, args, kwargs):
            states = args[0] if args else kwargs["hidden_states"]
            hidden.append(states.detach().clone())
            raise _Stop

        handle = self.blocks[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        device = next(model.parameters()).device
        try:
            for batch in batches:
                try:
                    logits_of(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                except _Stop:
                    continue
                raise RuntimeError("The first edited block was never called; BlockSkip does not fit this model.")
        finally:
            handle.remove()
        return hidden

    @contextlib.contextmanager
    def skipping(self) -> Iterator[None]:
        """Blocks ``0..first-1`` pass their input through for the duration (run the model on the captured states)."""
        originals = [self.blocks[i] for i in range(self.first)]
        try:
            for i, block in enumerate(originals):
                self.blocks[i] = _Passthrough(block)
            yield
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block

    def verified(self, model: nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> bool:
        """Whether the skipping forward on ``hidden`` gives the full forward's logits on ``batch`` (to float32
        round-off of the logits' magnitude)."""
        from .scoring.forward import logits_of

        device = next(model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.no_grad():
            full = logits_of(model, ids, mask).float()
            with self.skipping():
                skipped = logits_of(model, ids, mask, hidden=hidden).float()
        if full.shape != skipped.shape:
            return False
        valid = mask.bool()
        bound = 64 * torch.finfo(torch.float32).eps * float(full[valid].abs().max().clamp(min=1.0))
        difference = float((full - skipped)[valid].abs().max())
        if difference > bound:
            logger.info("Not skipping unchanged blocks: the skipping forward differs by %.3g (bound %.3g) on this "
                        "model.", difference, bound)
            return False
        return True
