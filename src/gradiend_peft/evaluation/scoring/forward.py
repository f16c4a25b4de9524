"""The forward pass every score shares: logits of any model, the causal-LM input convention (BOS), padded batches of
scored positions, and the per-token negative log-likelihood of a batch.

The causal-LM input convention (see `gradiend_peft.evaluation.scoring` for the whole statement): a text is the
tokenizer's own encoding of it, with the special tokens the tokenizer itself puts in front (Llama's and Gemma's
``<bos>``; GPT-2 and SmolLM2 put none) and no trailing EOS; when the first token that must be predicted would have
nothing before it, the tokenizer's BOS token is put in front. Without a BOS token such a token cannot be predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...data.collators import CausalLMCollator
from ...objective.gradients import check_inputs_fit
from ...tuner.constants import IGNORE_INDEX, OBJECTIVES
from .._common import length_batches, model_device

__all__ = [
    "causal_lead_ids",
    "causal_text_ids",
    "causal_token_nll",
    "check_objective",
    "float_logits",
    "label_batches",
    "logits_of",
    "pad_id",
    "text_token_ids",
]

Spans = Optional[Sequence[Optional[Sequence[tuple[int, int]]]]]
"""Per text, the ``(start, end)`` character spans whose tokens are scored (``None``: every token)."""
_NLL_CHUNK = 256
"""Positions per cross-entropy call in `causal_token_nll` (bounds its vocabulary-sized temporaries)."""


def check_objective(objective: str) -> str:
    """``objective`` if it is one of `gradiend_peft.tuner.constants.OBJECTIVES`, else a `ValueError` naming them."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    return objective


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS, else 0 (padding is masked out)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def logits_of(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``(B, T, V)`` logits of any model returning ``.logits``, a tuple or a tensor (no KV cache is kept).

    With ``hidden`` (states captured at the first edited block, see `gradiend_peft.evaluation.block_skip`), the model runs
    on them as ``inputs_embeds`` instead of embedding ``input_ids``."""
    check_inputs_fit(model, input_ids, attention_mask)
    kwargs = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    if hidden is not None:
        kwargs["inputs_embeds"] = hidden
    else:
        kwargs["input_ids"] = input_ids
    output = model(attention_mask=attention_mask, **kwargs)
    if hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, (tuple, list)) else output


def float_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits at float32 at least: bf16/fp16 are upcast, float64 stays float64."""
    return logits if logits.dtype == torch.float64 else logits.float()


def text_token_ids(tokenizer: Any, text: str, spans: Optional[Sequence[tuple[int, int]]] = None,
                   special: bool = False) -> tuple[list[int], list[bool]]:
    """``(ids, scorable)``: the text's ids (with the tokenizer's special tokens when ``special``) and, per token,
    whether it may be scored: not a special token and, when ``spans`` are given, overlapping one of the
    ``(start, end)`` character spans (this needs a fast tokenizer, for the offsets)."""
    if spans is not None and not getattr(tokenizer, "is_fast", False):
        raise TypeError("Scoring character spans needs a fast tokenizer (for offsets); load it with use_fast=True.")
    enc = tokenizer(text, add_special_tokens=special, return_special_tokens_mask=True,
                    return_offsets_mapping=spans is not None)
    ids = [int(i) for i in enc["input_ids"]]
    keep = [not s for s in enc["special_tokens_mask"]]
    if spans is not None:
        keep = [k and any(end > a and start < b for a, b in spans) for k, (start, end) in zip(keep, enc["offset_mapping"])]
    return ids, keep


def causal_lead_ids(tokenizer: Any, first_predicted: int) -> list[int]:
    """The ids put before a text's own tokens when its token ``first_predicted`` (0: the text's first token) is the
    first one to predict: the tokenizer's own leading special tokens, or ``[BOS]`` when there are none and that token
    would otherwise have nothing before it (``first_predicted == 0``); ``[]`` when the tokenizer has neither."""
    lead = list(CausalLMCollator(tokenizer).leading_ids)  # what tokenizer(text) itself puts in front
    if not lead and first_predicted == 0 and tokenizer.bos_token_id is not None:
        lead = [int(tokenizer.bos_token_id)]
    return lead


def causal_text_ids(tokenizer: Any, texts: Sequence[str], spans: Spans = None,
                    max_length: Optional[int] = None) -> list[tuple[list[int], list[int]]]:
    """Per text, ``(input ids, scored positions)`` of the whole text under the causal convention: every token of
    the text (or, with spans for it, every token overlapping them) is predicted from the tokens before it; a
    position ``t`` scores ``log p(ids[t] | ids[:t])``. A first token with nothing before it (no lead, no BOS) is
    context only. ``max_length`` truncates each input (lead included) to that many tokens."""
    lead = causal_lead_ids(tokenizer, 0)
    out = []
    for i, text in enumerate(texts):
        ids, keep = text_token_ids(tokenizer, text, None if spans is None else spans[i])
        ids, keep = lead + ids, [False] * len(lead) + keep
        if max_length is not None:
            ids, keep = ids[:max_length], keep[:max_length]
        out.append((ids, [t for t in range(1, len(ids)) if keep[t]]))
    return out


def label_batches(encoded: Sequence[tuple[list[int], Sequence[int]]], pad: int, batch_size: int,
                  labels: Optional[Sequence[Sequence[int]]] = None) -> tuple[dict[str, torch.Tensor], ...]:
    """Padded batches of similar length (right padding): ``input_ids``, ``attention_mask``, ``labels`` and ``index``
    (each row's position in ``encoded``).

    Args:
        encoded: per text, ``(ids, positions)``; ``labels[b, t]`` is ``ids[t]`` at the positions, ``-100`` elsewhere.
        pad: the padding id.
        batch_size: texts per batch.
        labels (*optional*): per text, its labels in full (instead of the ids at the positions).
    """
    out = []
    for chunk in length_batches([len(ids) for ids, _ in encoded], batch_size):
        length = max(len(encoded[i][0]) for i in chunk)
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        targets = torch.full((len(chunk), length), IGNORE_INDEX, dtype=torch.long)
        for b, i in enumerate(chunk):
            ids, positions = encoded[i]
            input_ids[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
            if labels is not None:
                targets[b, : len(ids)] = torch.tensor(list(labels[i]))
            elif positions:
                targets[b, list(positions)] = input_ids[b, list(positions)]
        out.append({"input_ids": input_ids, "attention_mask": mask, "labels": targets, "index": torch.tensor(chunk)})
    return tuple(out)


@torch.no_grad()
def causal_token_nll(model: nn.Module, batch: dict[str, torch.Tensor],
                     hidden: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, nll)``: for every labelled position ``t >= 1`` of a batch from `label_batches`, its batch row and
    ``-log p(labels[t] | input_ids[:t])`` (float64, CPU; from float32 logits at least), in row-major order.

    The logits at ``t - 1`` predict position ``t``; position 0 is never predicted. ``hidden``: see `logits_of`."""
    device = model_device(model)
    logits = logits_of(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), hidden)
    targets = batch["labels"].to(logits.device)[:, 1:]
    rows, positions = torch.nonzero(targets != IGNORE_INDEX, as_tuple=True)
    # a chunk of positions at a time: the batch's (B, T, V) logits stay the only vocabulary-sized tensor
    values = [F.cross_entropy(float_logits(logits[r, p]), targets[r, p], reduction="none").double().cpu()
              for r, p in ((rows[s:s + _NLL_CHUNK], positions[s:s + _NLL_CHUNK])
                           for s in range(0, len(rows), _NLL_CHUNK))]
    nll = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    return rows.cpu(), nll
