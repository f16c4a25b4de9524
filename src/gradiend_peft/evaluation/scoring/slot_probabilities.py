"""Class probabilities at a row's slot: how likely a rewritten model puts each class's words where a row's ``[MASK]``
stands, and the papers' bias indices over them.

For a row ``text = prefix [MASK] suffix`` and a class ``C`` with words ``w_1..w_m``, ``P(C) = sum_{t in T_C}
softmax(z)_t`` where ``z`` are the logits that predict the slot and ``T_C`` is the set of the *first* tokens of the
words ``w_j`` written with the casing of the row's ``factual`` word (`gradiend_peft.data.copy_casing`) and
tokenised in context (after the row's prefix). Masked LM: ``z`` at one mask token that replaces the slot. Causal LM:
the input is the prefix alone (with the lead of the causal convention, `gradiend_peft.evaluation.scoring`: the
tokenizer's own leading special tokens, and its BOS when the slot starts the text) and ``z`` are the logits at its
last token (they predict the next token), exactly where the causal collator puts the labels.

Rows are prepared once (`prepare_slots`: tokenised, batched) and measured as often as needed with forward passes
only (`slot_probabilities`): the rewrite search measures the same prepared rows for every candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ...data.collators import target_pieces
from ...data.feature import MASK_PLACEHOLDER, copy_casing
from ...objective.gradients import head_at_positions
from .._common import length_batches, model_device
from .forward import causal_lead_ids, check_objective, float_logits, logits_of, pad_id

__all__ = ["SlotInputs", "bias_indices", "class_words_from_rows", "prepare_slots", "slot_probabilities"]

logger = logging.getLogger(__name__)


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
            f"The rows name {len(words)} class(es) {list(words)}; give classes={{'SG': ['is'], 'PL': ['are']}} or rows "
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


def _slot_ids(tokenizer: Any, objective: str, prefix: str, suffix: str, leads: Mapping[bool, list[int]],
              index: int) -> tuple[list[int], int]:
    """``(input ids, the position whose logits predict the slot)``; causal ``leads[starts]``: the lead of a slot that
    starts the text (``True``) or follows context (``False``)."""
    if objective == "masked_lm":
        ids = list(tokenizer(prefix + tokenizer.mask_token + suffix)["input_ids"])
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        if len(positions) != 1:
            raise ValueError(f"row {index}: expected one mask token after encoding, found {len(positions)}.")
        return ids, positions[0]
    context = list(tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"])
    ids = leads[not context] + context
    if not ids:
        raise ValueError(f"row {index}: the slot starts the text and the tokenizer has no BOS token to predict it from.")
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
    check_objective(objective)
    if objective == "masked_lm" and getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("A masked-LM slot needs a tokenizer with a mask token.")
    words = {str(c): [str(w) for w in ws] for c, ws in (classes or class_words_from_rows(rows)).items()}
    names = tuple(words)
    leads = {}
    if objective == "causal_lm":
        leads = {True: causal_lead_ids(tokenizer, 0), False: causal_lead_ids(tokenizer, 1)}
    encoded = []
    for i, row in enumerate(rows):
        prefix, suffix = row["text"].split(MASK_PLACEHOLDER)
        ids, position = _slot_ids(tokenizer, objective, prefix, suffix, leads, i)
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
    pad = pad_id(tokenizer)
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
        probs = torch.softmax(float_logits(slot_logits), dim=-1).double().cpu()
        ids = batch["token_ids"]
        picked = probs.gather(1, ids.clamp(min=0).reshape(len(ids), -1)).reshape(ids.shape)
        out[batch["index"]] = (picked * (ids >= 0)).sum(dim=-1)
    return out


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
