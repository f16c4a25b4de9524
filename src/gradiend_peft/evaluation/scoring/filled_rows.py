"""Per-row log-odds of two words in a row's slot, scored as whole sentences.

A row holds a text with one ``[MASK]`` slot and two candidate fillers, ``factual`` and ``alternative`` (the columns
of `gradiend_peft.data.PAIR_COLUMNS`). Where the fillers are free words (one row's pair is not another's, and a word
may take several tokens) the slot's class probabilities of `slot_probabilities` do not apply; instead each row is
scored as two sentences, the slot filled with each word, and its log-odds is

    log P(text with factual) - log P(text with alternative)

(natural logarithms): the total log-likelihood of each filled sentence under a causal LM, its pseudo-log-likelihood
under a masked LM (`sentence_log_likelihoods`). Under a causal LM the tokens before the slot are the same in both
sentences and cancel, so the log-odds is that of the filler and of what follows it given the filler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ...data.feature import MASK_PLACEHOLDER as MASK
from .likelihood import sentence_log_likelihoods

__all__ = ["filled_row_log_odds", "filled_texts"]


def filled_texts(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Each row's text with its slot filled by ``factual`` and by ``alternative``.

    Raises:
        `ValueError`: for a row without exactly one ``[MASK]`` or without both fillers, naming the row.
    """
    pairs = []
    for index, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str) or text.count(MASK) != 1:
            raise ValueError(f"Row {index} needs a text with exactly one {MASK} slot, got {text!r}.")
        words = row.get("factual"), row.get("alternative")
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"Row {index} needs the words 'factual' and 'alternative' for its slot, got {words!r}.")
        pairs.append((text.replace(MASK, words[0]), text.replace(MASK, words[1])))
    return pairs


def filled_row_log_odds(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    objective: Optional[str] = None,
    *,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Per row, ``log P(text with factual) - log P(text with alternative)`` (see the module docstring).

    Args:
        model: a causal or masked LM, or a `peft.PeftModel` around one (steering or merged edits act as usual).
        tokenizer: its tokenizer.
        rows: rows with ``text`` (one ``[MASK]``), ``factual`` and ``alternative``.
        objective (`str`, *optional*): ``causal_lm`` or ``masked_lm`` (default: inferred).
        batch_size: sentences per forward pass.
        progress (`bool`, *optional*): show a progress bar (default: tqdm decides).

    Returns:
        `torch.Tensor`: float64, one value per row, in the rows' order (positive: the factual word is more likely).

    Raises:
        `ValueError`: for a malformed row (see `filled_texts`) or an empty list.
    """
    if not rows:
        raise ValueError("filled_row_log_odds needs at least one row.")
    pairs = filled_texts(rows)
    texts = [text for pair in pairs for text in pair]
    scores = sentence_log_likelihoods(model, tokenizer, texts, objective, batch_size=batch_size, progress=progress,
                                      desc="filled rows")
    totals = torch.tensor([s.total for s in scores], dtype=torch.float64)
    return totals[0::2] - totals[1::2]
