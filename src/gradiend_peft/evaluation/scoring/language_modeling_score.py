"""The language-modelling score (LMS) of a (rewritten) model on neutral text: does the edit keep the model a model?

- Masked LM: in each text ``k = max(1, floor(f n + 1/2))`` of its ``n`` maskable tokens are replaced by the mask
  token (``f = 0.15``; drawn once with ``random.Random(seed)``; special tokens, such as ``[CLS]``/``[SEP]`` or a
  special token written in the text, are never masked), and ``LMS = (#masked tokens whose argmax prediction is the
  original token) / (#masked tokens)`` over all texts.
- Causal LM: ``LMS = 1 / (1 + NLL)`` with ``NLL`` the mean over all texts' tokens of ``-log p(x_t | x_<t)``: the
  sentence log-likelihood of `gradiend_peft.evaluation.scoring.likelihood` on neutral text, with the same input
  convention (every token of the text is predicted, the first one from the BOS token where the tokenizer puts none
  of its own; see `gradiend_peft.evaluation.scoring`); ``perplexity = exp(NLL)``.

Texts are prepared once (`prepare_lms`: tokenised, masks drawn, batched) and measured as often as needed with
forward passes only (`language_modeling_score`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ...objective.gradients import head_at_positions, label_positions
from ...tuner.constants import IGNORE_INDEX
from .._common import model_device
from .forward import causal_text_ids, causal_token_nll, check_objective, label_batches, logits_of, pad_id

__all__ = ["LMSInputs", "LMSResult", "language_modeling_score", "lms_token_scores", "masked_token_predictions",
           "prepare_lms"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMSInputs:
    """Neutral texts prepared for `language_modeling_score`: padded batches with ``input_ids``,
    ``attention_mask``, ``labels`` (the original ids at the predicted positions, ``-100`` elsewhere; masked LM: the
    masked positions; causal LM: every scored token, never shifted here) and ``index``."""

    objective: str
    batches: tuple[dict[str, torch.Tensor], ...]
    n_texts: int
    n_tokens: int


@dataclass(frozen=True)
class LMSResult:
    """The language-modelling score (see the module docstring) and what it was computed from."""

    lms: float
    objective: str
    n_tokens: int
    mean_nll: Optional[float] = None
    perplexity: Optional[float] = None


def _masked_inputs(texts: Sequence[str], tokenizer: Any, mask_fraction: float, seed: int,
                   max_length: Optional[int]) -> list[tuple[list[int], list[int]]]:
    """Per text with a maskable token, ``(ids with the drawn masks, labels)``."""
    rng = random.Random(seed)
    specials = set(tokenizer.all_special_ids)
    encoded = []
    for text in texts:
        enc = tokenizer(text, truncation=max_length is not None, max_length=max_length, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        candidates = [i for i, (t, s) in enumerate(zip(ids, enc["special_tokens_mask"])) if not s and t not in specials]
        if not candidates:
            continue
        k = max(1, math.floor(mask_fraction * len(candidates) + 0.5))
        labels = [IGNORE_INDEX] * len(ids)
        for i in sorted(rng.sample(candidates, k)):
            labels[i], ids[i] = ids[i], int(tokenizer.mask_token_id)
        encoded.append((ids, labels))
    return encoded


def prepare_lms(
    texts: Sequence[str],
    tokenizer: Any,
    objective: str,
    *,
    mask_fraction: float = 0.15,
    seed: int = 0,
    batch_size: int = 32,
    max_length: Optional[int] = None,
) -> LMSInputs:
    """Tokenises neutral texts (and draws the masks, masked LM) once, for `language_modeling_score`.

    Args:
        texts: neutral texts.
        tokenizer: the model's tokenizer.
        objective: ``masked_lm`` or ``causal_lm``.
        mask_fraction: the share ``f`` of maskable tokens masked per text (masked LM).
        seed: seeds the mask draw (masked LM); the same texts and seed give the same masks.
        batch_size: texts per forward pass.
        max_length: truncate texts to this many tokens (default: no truncation).

    Raises:
        ValueError: for an unknown objective, a mask fraction outside (0, 1], or no text with a token to predict.
    """
    check_objective(objective)
    if not 0.0 < mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}.")
    if objective == "masked_lm":
        masked = _masked_inputs(texts, tokenizer, mask_fraction, seed, max_length)
        encoded = [(ids, [t for t, label in enumerate(labels) if label != IGNORE_INDEX]) for ids, labels in masked]
        labels = [labels for _, labels in masked]
    else:
        encoded = [e for e in causal_text_ids(tokenizer, texts, max_length=max_length) if e[1]]
        labels = None
    if len(encoded) < len(texts):
        logger.info("LMS: skipped %d of %d texts with nothing to predict", len(texts) - len(encoded), len(texts))
    if not encoded:
        raise ValueError("No neutral text has a token to predict (texts too short?).")
    prepared = label_batches(encoded, pad_id(tokenizer), batch_size, labels)
    return LMSInputs(objective=objective, batches=prepared, n_texts=len(encoded),
                     n_tokens=sum(len(positions) for _, positions in encoded))


@torch.no_grad()
def masked_token_predictions(model: nn.Module, inputs: LMSInputs,
                             hidden: Optional[Sequence[torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked LM: ``(predicted ids, original ids)`` at every masked position (the ``masked_lm`` configuration of the
    ``language_modeling_score`` evaluate metric takes them as ``predictions`` and ``references``)."""
    if inputs.objective != "masked_lm":
        raise ValueError("masked_token_predictions needs masked-LM inputs (prepare_lms(..., 'masked_lm')).")
    device = model_device(model)
    predicted, original = [], []
    for number, batch in enumerate(inputs.batches):
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        positions, valid = label_positions([labels])
        with head_at_positions(model, positions, input_ids.shape[1]) as head:  # logits at the masked positions only
            logits = logits_of(model, input_ids, batch["attention_mask"].to(device),
                               None if hidden is None else hidden[number])
        if head["applied"]:
            labels = torch.where(valid, labels.gather(1, positions), torch.full_like(positions, IGNORE_INDEX))
        labels = labels.to(logits.device)
        selected = labels != IGNORE_INDEX
        predicted.append(logits[selected].argmax(dim=-1).cpu())
        original.append(labels[selected].cpu())
    return torch.cat(predicted), torch.cat(original)


@torch.no_grad()
def lms_token_scores(model: nn.Module, inputs: LMSInputs, hidden: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Per predicted token (float64, CPU): masked LM, 1.0 where the argmax is the original token, else 0.0; causal LM,
    the negative log-likelihood ``-log p(x_t | x_<t)`` of every scored token."""
    if inputs.objective == "masked_lm":
        predicted, original = masked_token_predictions(model, inputs, hidden)
        return (predicted == original).double()
    values = [causal_token_nll(model, batch, None if hidden is None else hidden[number])[1]
              for number, batch in enumerate(inputs.batches)]
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def language_modeling_score(model: nn.Module, inputs: LMSInputs,
                            hidden: Optional[Sequence[torch.Tensor]] = None) -> LMSResult:
    """The LMS of ``model`` on prepared neutral text (see the module docstring); ``hidden``: see `logits_of`."""
    scores = lms_token_scores(model, inputs, hidden)
    if inputs.objective == "masked_lm":
        return LMSResult(lms=float(scores.mean()), objective=inputs.objective, n_tokens=scores.numel())
    nll = float(scores.mean())
    return LMSResult(lms=1.0 / (1.0 + nll), objective=inputs.objective, n_tokens=scores.numel(), mean_nll=nll,
                     perplexity=math.exp(nll) if nll < 700 else math.inf)
