"""Metrics of a (rewritten) language model: class probabilities at the slot, the language-modelling score,
and bias indices.

Inputs are prepared once (tokenised, batched, masks drawn) and then measured as often as needed: the rewrite
search measures the same prepared inputs for every candidate, forwards only.

- Slot probabilities (`prepare_slots`, `slot_probabilities`): for a row ``text = prefix [MASK] suffix`` and a class
  ``C`` with words ``w_1..w_m``, ``P(C) = sum_{t in T_C} softmax(z)_t`` where ``z`` are the logits that predict the
  slot and ``T_C`` is the set of the *first* tokens of the words ``w_j`` written with the row's casing (``"She"``
  gives ``"He"``) and tokenised in context (after the row's prefix). Masked LM: ``z`` at one mask token that replaces
  the slot. Causal LM: the input is the prefix alone and ``z`` are the logits at its last token (they predict the next
  token), exactly where the causal collator puts the labels.
- LMS (`prepare_lms`, `language_modeling_score`) on neutral text. Masked LM: in each text ``k = max(1, floor(f n +
  1/2))`` of its ``n`` maskable tokens are replaced by the mask token (``f = 0.15``; drawn once with
  ``random.Random(seed)``; special tokens, such as ``[CLS]``/``[SEP]`` or a special token written in the text, are
  never masked), and ``LMS = (#masked tokens whose argmax prediction is the original token) / (#masked tokens)``
  over all texts. Causal LM: ``LMS = 1 / (1 + NLL)`` with ``NLL`` the mean over all texts' tokens ``t >= 1`` of
  ``-log p(x_t | x_<t)``, the logits at position ``t - 1`` predicting token ``t`` (the first token is never
  predicted); ``perplexity = exp(NLL)``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collators import CausalLMCollator, target_pieces
from ..data.feature import MASK_PLACEHOLDER, copy_casing
from ..objective.gradients import check_inputs_fit, head_at_positions, label_positions
from ..tuner.constants import IGNORE_INDEX, OBJECTIVES
from ._common import length_batches, model_device

__all__ = [
    "LMSInputs",
    "LMSResult",
    "SlotInputs",
    "bias_indices",
    "class_words_from_rows",
    "language_modeling_score",
    "lms_token_scores",
    "masked_token_predictions",
    "prepare_lms",
    "prepare_slots",
    "slot_probabilities",
]

logger = logging.getLogger(__name__)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def logits_of(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``(B, T, V)`` logits of any model returning ``.logits``, a tuple or a tensor (no KV cache is kept).

    With ``hidden`` (states captured at the first edited block, see `gradiend_peft.evaluation.prefix`), the model runs
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


# ----------------------------------------------------------------------------------------- slot probabilities
def class_words_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{class: words}`` seen in the rows: each row's ``factual`` under ``factual_class`` and its ``alternative``
    under ``alternative_class`` (lower-cased, in order of first appearance)."""
    words: dict[str, list[str]] = {}
    for row in rows:
        for word_key, class_key in (("factual", "factual_class"), ("alternative", "alternative_class")):
            cls, word = row.get(class_key), row.get(word_key)
            if cls is None or word is None:
                continue
            bucket = words.setdefault(str(cls), [])
            if word.lower() not in bucket:
                bucket.append(word.lower())
    if len(words) < 2:
        raise ValueError(
            f"The rows name {len(words)} class(es) {list(words)}; give classes={{'M': ['he'], 'F': ['she']}} or rows "
            "with factual_class and alternative_class columns (as mine_pairs makes them)."
        )
    return words


@dataclass(frozen=True)
class SlotInputs:
    """Rows tokenised for `slot_probabilities`.

    Attributes:
        classes: the class names, the column order of the probabilities.
        row_classes: each row's ``factual_class`` (``None`` when absent), in the rows' order.
        batches: padded batches: ``input_ids``, ``attention_mask``, ``position`` (the slot's logit position),
            ``token_ids`` ``(B, C, W)`` (class tokens, ``-1`` padded) and ``index`` (the rows' original indices).
    """

    classes: tuple[str, ...]
    row_classes: tuple[Optional[str], ...]
    batches: tuple[dict[str, torch.Tensor], ...]

    def __len__(self) -> int:
        return len(self.row_classes)


def _slot_ids(tokenizer: Any, objective: str, prefix: str, suffix: str, leading: list[int], index: int) -> tuple[list[int], int]:
    if objective == "masked_lm":
        ids = list(tokenizer(prefix + tokenizer.mask_token + suffix)["input_ids"])
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        if len(positions) != 1:
            raise ValueError(f"row {index}: expected one mask token after encoding, found {len(positions)}.")
        return ids, positions[0]
    ids = leading + list(tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"])
    if not ids:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"row {index}: the slot starts the text and the tokenizer has no BOS token to predict it from.")
        ids = [int(tokenizer.bos_token_id)]
    return ids, len(ids) - 1


def prepare_slots(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    objective: str,
    *,
    classes: Optional[Mapping[str, Sequence[str]]] = None,
    batch_size: int = 32,
) -> SlotInputs:
    """Tokenises rows (``text`` with one ``[MASK]``, ``factual``) for `slot_probabilities`.

    Args:
        rows: mined rows; ``factual`` gives the casing of the class words, ``factual_class`` the row's class.
        tokenizer: the model's tokenizer.
        objective: ``masked_lm`` or ``causal_lm``.
        classes: ``{class: words}`` (a `Feature`'s ``classes`` works); default `class_words_from_rows`.
        batch_size: rows per forward pass (rows are batched by length to save padding).
    """
    _check_objective(objective)
    if objective == "masked_lm" and getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("A masked-LM slot needs a tokenizer with a mask token.")
    words = {str(c): [str(w) for w in ws] for c, ws in (classes or class_words_from_rows(rows)).items()}
    names = tuple(words)
    leading = CausalLMCollator(tokenizer).leading_ids if objective == "causal_lm" else []
    encoded = []
    for i, row in enumerate(rows):
        prefix, suffix = row["text"].split(MASK_PLACEHOLDER)
        ids, position = _slot_ids(tokenizer, objective, prefix, suffix, leading, i)
        tokens = []
        for name in names:
            firsts: list[int] = []
            for word in words[name]:
                try:
                    first = target_pieces(tokenizer, prefix, copy_casing(row["factual"], word))[0]
                except ValueError as err:
                    raise ValueError(f"row {i} ({row['text']!r}), class {name!r}: {err}") from err
                if first not in firsts:
                    firsts.append(first)
            tokens.append(firsts)
        flat = [t for ts in tokens for t in ts]
        if len(flat) != len(set(flat)):
            logger.warning("row %d: classes share a first token %s; its probability counts for each.", i, tokens)
        encoded.append((ids, position, tokens))
    width = max((len(ts) for _, _, tokens in encoded for ts in tokens), default=1)
    pad = _pad_id(tokenizer)
    prepared = []
    for chunk in length_batches([len(e[0]) for e in encoded], batch_size):
        length = max(len(encoded[i][0]) for i in chunk)
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        token_ids = torch.full((len(chunk), len(names), width), -1, dtype=torch.long)
        for b, i in enumerate(chunk):
            ids, _, tokens = encoded[i]
            input_ids[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
            for c, ts in enumerate(tokens):
                token_ids[b, c, : len(ts)] = torch.tensor(ts)
        prepared.append({
            "input_ids": input_ids, "attention_mask": mask, "token_ids": token_ids,
            "position": torch.tensor([encoded[i][1] for i in chunk]), "index": torch.tensor(list(chunk)),
        })
    row_classes = tuple(None if row.get("factual_class") is None else str(row["factual_class"]) for row in rows)
    return SlotInputs(classes=names, row_classes=row_classes, batches=tuple(prepared))


@torch.no_grad()
def slot_probabilities(model: nn.Module, slots: SlotInputs,
                       hidden: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """``P(C)`` for every row and class, ``(N, C)`` float64 on the CPU, in the rows' order (see the module
    docstring). Forward passes only; ``hidden``: one captured state per batch (see `logits_of`)."""
    device = model_device(model)
    out = torch.zeros(len(slots), len(slots.classes), dtype=torch.float64)
    for number, batch in enumerate(slots.batches):
        input_ids = batch["input_ids"].to(device)
        position = batch["position"].to(device)
        with head_at_positions(model, position.unsqueeze(1), input_ids.shape[1]) as head:  # the slot's logits only
            logits = logits_of(model, input_ids, batch["attention_mask"].to(device),
                               None if hidden is None else hidden[number])
        rows = torch.arange(logits.shape[0], device=logits.device)
        slot_logits = logits[:, 0] if head["applied"] else logits[rows, position]
        probs = torch.softmax(slot_logits.float(), dim=-1).double().cpu()
        ids = batch["token_ids"]
        picked = probs.gather(1, ids.clamp(min=0).reshape(len(ids), -1)).reshape(ids.shape)
        out[batch["index"]] = (picked * (ids >= 0)).sum(dim=-1)
    return out


# ----------------------------------------------------------------------------------------------------- LMS
@dataclass(frozen=True)
class LMSInputs:
    """Neutral texts prepared for `language_modeling_score`: padded batches with ``input_ids``,
    ``attention_mask`` and ``labels`` (masked LM: original ids at the masked positions, ``-100`` elsewhere;
    causal LM: the input ids, ``-100`` at padding; never shifted here)."""

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
    """
    _check_objective(objective)
    if not 0.0 < mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}.")
    rng = random.Random(seed)
    specials = set(tokenizer.all_special_ids)
    encoded: list[tuple[list[int], list[int]]] = []
    skipped = 0
    for text in texts:
        enc = tokenizer(text, truncation=max_length is not None, max_length=max_length, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        if objective == "masked_lm":
            candidates = [i for i, (t, s) in enumerate(zip(ids, enc["special_tokens_mask"])) if not s and t not in specials]
            if not candidates:
                skipped += 1
                continue
            k = max(1, math.floor(mask_fraction * len(candidates) + 0.5))
            chosen = sorted(rng.sample(candidates, k))
            labels = [IGNORE_INDEX] * len(ids)
            for i in chosen:
                labels[i], ids[i] = ids[i], int(tokenizer.mask_token_id)
        else:
            if len(ids) < 2:
                skipped += 1
                continue
            labels = list(ids)
        encoded.append((ids, labels))
    if skipped:
        logger.info("LMS: skipped %d of %d texts with nothing to predict", skipped, len(texts))
    if not encoded:
        raise ValueError("No neutral text has a token to predict (texts too short?).")
    pad = _pad_id(tokenizer)
    prepared, n_tokens = [], 0
    for chunk in length_batches([len(e[0]) for e in encoded], batch_size):
        length = max(len(encoded[i][0]) for i in chunk)
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        labels = torch.full((len(chunk), length), IGNORE_INDEX, dtype=torch.long)
        for b, i in enumerate(chunk):
            ids, labs = encoded[i]
            input_ids[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
            labels[b, : len(ids)] = torch.tensor(labs)
        n_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum() if objective == "causal_lm" else (labels != IGNORE_INDEX).sum())
        prepared.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return LMSInputs(objective=objective, batches=tuple(prepared), n_texts=len(encoded), n_tokens=n_tokens)


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


_NLL_CHUNK = 256
"""Positions per cross-entropy call in `lms_token_scores` (bounds its vocabulary-sized temporaries)."""


@torch.no_grad()
def lms_token_scores(model: nn.Module, inputs: LMSInputs, hidden: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Per predicted token (float64, CPU): masked LM, 1.0 where the argmax is the original token, else 0.0; causal LM,
    the negative log-likelihood ``-log p(x_t | x_<t)`` for every text token ``t >= 1``."""
    if inputs.objective == "masked_lm":
        predicted, original = masked_token_predictions(model, inputs, hidden)
        return (predicted == original).double()
    device = model_device(model)
    values = []
    for number, batch in enumerate(inputs.batches):
        logits = logits_of(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                           None if hidden is None else hidden[number])
        labels = batch["labels"].to(logits.device)
        targets = labels[:, 1:]
        rows, positions = torch.nonzero(targets != IGNORE_INDEX, as_tuple=True)
        # the NLL a chunk of positions at a time: the batch's (B, T, V) logits are the only vocabulary-sized tensor
        # (no selected copy, no full log-softmax beside them)
        for start in range(0, len(rows), _NLL_CHUNK):
            r, p = rows[start:start + _NLL_CHUNK], positions[start:start + _NLL_CHUNK]
            values.append(F.cross_entropy(logits[r, p].float(), targets[r, p], reduction="none").double().cpu())
        del logits
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


# --------------------------------------------------------------------------------------- plain statistics
def bias_indices(probs: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """The papers' bias indices (without the LMS factor) for two classes ``A, B`` over rows ``i``:

    - ``bpi = mean_i (1 - |P_i(A) - P_i(B)|) (P_i(A) + P_i(B))`` (balance);
    - ``favour[A] = mean_i (1 - P_i(B)) P_i(A)`` and ``favour[B] = mean_i (1 - P_i(A)) P_i(B)`` (FPI/MPI);
    - ``mean_abs_gap = mean_i |P_i(A) - P_i(B)|``.
    """
    if probs.ndim != 2 or probs.shape[1] != 2 or len(classes) != 2:
        raise ValueError("bias_indices needs probabilities of exactly two classes, shape (N, 2).")
    a, b = probs[:, 0].double(), probs[:, 1].double()
    gap = (a - b).abs()
    return {
        "bpi": float(((1 - gap) * (a + b)).mean()),
        "favour": {classes[0]: float(((1 - b) * a).mean()), classes[1]: float(((1 - a) * b).mean())},
        "mean_abs_gap": float(gap.mean()),
    }
