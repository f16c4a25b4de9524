"""Sentence scores of a language model: causal log-likelihood and masked pseudo-log-likelihood, for benchmark
sentences and any other text.

All log-probabilities are natural logarithms, computed from float32 logits at least (bf16/fp16 logits are upcast;
float64 logits stay float64) and summed in float64. The model is called as ``model(input_ids=...,
attention_mask=...)`` (no KV cache), so a plain transformers model and a `peft.PeftModel` with GRADIEND steering
active are scored alike; it is put in eval mode for the call and its training flags restored after.

- Causal LM (`causal_log_likelihoods`): the causal input convention of `gradiend_peft.evaluation.scoring` (the
  tokenizer's own leading special tokens, else its BOS, in front of the text; no EOS), every token of the text
  scored as ``log p(x_t | x_<t)``, the first one from the lead. Without a lead (no special tokens of the tokenizer's
  own and no BOS token) the first token is conditioned on nothing and is not scored: the score covers
  ``x_2 .. x_n`` (a one-token text then has nothing to score and is refused). Texts are right-padded in batches
  with an attention mask; padding does not change a text's score (up to float rounding).
- Masked LM (`pseudo_log_likelihoods`): the pseudo-log-likelihood of Salazar et al. (2020): the text is tokenised
  with its special tokens (``[CLS] .. [SEP]``), each scored token is replaced by the mask token in turn (one copy
  of the text per scored token, many copies per forward pass) and ``log P(original token)`` at that position is
  summed. Special tokens are never scored.
- ``spans`` (both objectives): only the tokens whose characters overlap one of the text's ``(start, end)`` character
  spans are scored (this needs a fast tokenizer, for the offsets); the rest of the text stays visible.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.feature import MASK_PLACEHOLDER as MASK
from ...objective.gradients import max_positions
from ...tuner.constants import infer_objective
from .._common import batches, eval_mode, model_device
from .forward import (
    Spans,
    causal_text_ids,
    causal_token_nll,
    check_objective,
    float_logits,
    label_batches,
    logits_of,
    pad_id,
    text_token_ids,
)

__all__ = [
    "SentenceScore",
    "causal_log_likelihoods",
    "conditional_log_likelihoods",
    "infer_objective",
    "masked_word_log_probs",
    "pseudo_log_likelihoods",
    "sentence_log_likelihoods",
    "shared_token_pseudo_log_likelihoods",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentenceScore:
    """The log-likelihood of the scored tokens of one text.

    Attributes:
        total: the sum of the scored tokens' log-probabilities (natural log).
        n_tokens: how many tokens were scored.
    """

    total: float
    n_tokens: int

    @property
    def mean(self) -> float:
        """The mean log-probability per scored token."""
        return self.total / self.n_tokens


def _check_objective(model: nn.Module, objective: Optional[str]) -> str:
    """``objective``, or the model's (`infer_objective`) where it is ``None``."""
    return check_objective(infer_objective(model) if objective is None else objective)


def _check_spans(texts: Sequence[str], spans: Spans) -> list[Optional[Sequence[tuple[int, int]]]]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string.")
    if spans is None:
        return [None] * len(texts)
    if len(spans) != len(texts):
        raise ValueError(f"got {len(spans)} span lists for {len(texts)} texts.")
    return list(spans)


def _check_lengths(model: nn.Module, lengths: Sequence[int], text_of: Any, desc: str) -> None:
    """Refuses a text longer than the model's positions, naming it (the ``i``-th text, ``text_of(i)``) and ``desc``
    (a benchmark's name where the suite scores), before any batch is built."""
    limit = max_positions(model)
    for i, n in enumerate(lengths):
        if limit is not None and n > limit:
            raise ValueError(
                f"{desc}: text {i} ({text_of(i)[:100]!r}) is {n} tokens long, more than the {limit} positions of the "
                "model, so it cannot be scored. Score a model with more positions, or leave this benchmark out "
                "(benchmarks=... of run_bias_benchmarks; --benchmarks of gradiend-peft bias-eval)."
            )


def _progress(iterable: Any, desc: str, progress: Optional[bool], total: Optional[int] = None) -> Any:
    return tqdm(iterable, desc=desc, unit="batch", total=total, disable=None if progress is None else not progress)


# ----------------------------------------------------------------------------------------------------- causal
def _causal_scores(model: nn.Module, encoded: list[tuple[list[int], list[int]]], pad: int, batch_size: int,
                   desc: str, progress: Optional[bool]) -> list[SentenceScore]:
    """``encoded``: per text ``(ids, positions)``; position ``t >= 1`` scores ``log p(ids[t] | ids[:t])``."""
    totals = [0.0] * len(encoded)
    with eval_mode(model):
        for batch in _progress(label_batches(encoded, pad, batch_size), desc, progress):
            rows, nll = causal_token_nll(model, batch)
            per_row = torch.zeros(len(batch["index"]), dtype=torch.float64).index_add_(0, rows, nll)
            for b, i in enumerate(batch["index"].tolist()):
                totals[i] = -float(per_row[b])
    return [SentenceScore(total=totals[i], n_tokens=len(encoded[i][1])) for i in range(len(encoded))]


def causal_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    spans: Spans = None,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: str = "log-likelihood",
) -> list[SentenceScore]:
    """Causal-LM log-likelihood of each text (see the module docstring for the BOS convention).

    Args:
        model: a causal LM (or a `peft.PeftModel` around one).
        tokenizer: its tokenizer.
        texts: the texts.
        spans (*optional*): per text, ``(start, end)`` character spans whose tokens are scored (``None`` for a
            text, or for all: every token); tokens before and between the spans are the context.
        batch_size: texts per forward pass.
        progress: show a progress bar (default: tqdm decides).
        desc: the progress bar's label.

    Returns:
        `list[SentenceScore]`: per text, the sum (and mean) of its scored tokens' log-probabilities.

    Raises:
        ValueError: when a text has no token to score, or is longer than the model's positions (naming it).
    """
    span_lists = _check_spans(texts, spans)
    encoded = causal_text_ids(tokenizer, texts, span_lists)
    for i, (text, (_, positions)) in enumerate(zip(texts, encoded)):
        if not positions:
            raise ValueError(
                f"text {i} ({text[:60]!r}) has no token to score (without a BOS token the first token is not "
                "scored; with spans, no token overlaps them)."
            )
    _check_lengths(model, [len(ids) for ids, _ in encoded], lambda i: texts[i], desc)
    return _causal_scores(model, encoded, pad_id(tokenizer), batch_size, desc, progress)


# ----------------------------------------------------------------------------------------------------- masked
def _masked_scores(model: nn.Module, encoded: list[tuple[list[int], list[int]]], mask_id: int, pad: int,
                   batch_size: int, desc: str, progress: Optional[bool]) -> list[SentenceScore]:
    """``encoded``: per text ``(ids, positions)``; each position is masked in its own copy of the text and
    ``log P(ids[position])`` there is summed."""
    device = model_device(model)
    copies = sorted(((i, p) for i, (_, positions) in enumerate(encoded) for p in positions),
                    key=lambda c: len(encoded[c[0]][0]))
    totals = [0.0] * len(encoded)
    chunks = list(batches(copies, batch_size))
    with torch.no_grad(), eval_mode(model):
        for chunk in _progress(chunks, desc, progress):
            length = max(len(encoded[i][0]) for i, _ in chunk)
            input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), length), dtype=torch.long)
            for b, (i, p) in enumerate(chunk):
                ids = encoded[i][0]
                input_ids[b, : len(ids)] = torch.tensor(ids)
                attention[b, : len(ids)] = 1
            positions = torch.tensor([p for _, p in chunk])
            originals = input_ids[torch.arange(len(chunk)), positions].clone()
            input_ids[torch.arange(len(chunk)), positions] = mask_id
            logits = logits_of(model, input_ids.to(device), attention.to(device))
            at_mask = float_logits(logits[torch.arange(len(chunk), device=logits.device), positions.to(logits.device)])
            lp = torch.log_softmax(at_mask, dim=-1).gather(-1, originals.to(at_mask.device).unsqueeze(-1)).squeeze(-1)
            for (i, _), value in zip(chunk, lp.double().cpu().tolist()):
                totals[i] += value
    return [SentenceScore(total=totals[i], n_tokens=len(encoded[i][1])) for i in range(len(encoded))]


def _mask_ids(tokenizer: Any) -> tuple[int, int]:
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("A masked LM needs a tokenizer with a mask token.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pad_id(tokenizer)
    return int(tokenizer.mask_token_id), int(pad)


def pseudo_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    spans: Spans = None,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: str = "pseudo-log-likelihood",
) -> list[SentenceScore]:
    """Masked-LM pseudo-log-likelihood of each text: every scored token masked in turn, ``log P(original)`` summed.

    Args:
        model: a masked LM (or a `peft.PeftModel` around one).
        tokenizer: its tokenizer (with a mask token).
        texts: the texts.
        spans (*optional*): per text, ``(start, end)`` character spans whose tokens are scored (``None``: every
            non-special token); the other tokens stay visible.
        batch_size: masked copies per forward pass.
        progress: show a progress bar (default: tqdm decides).
        desc: the progress bar's label.

    Returns:
        `list[SentenceScore]`: per text, the sum (and mean) over its scored tokens.

    Raises:
        ValueError: when a text has no token to score, or is longer than the model's positions (naming it).
    """
    span_lists = _check_spans(texts, spans)
    mask_id, pad = _mask_ids(tokenizer)
    encoded = []
    for i, (text, text_spans) in enumerate(zip(texts, span_lists)):
        ids, keep = text_token_ids(tokenizer, text, text_spans, special=True)
        positions = [t for t, k in enumerate(keep) if k]
        if not positions:
            raise ValueError(f"text {i} ({text[:60]!r}) has no token to score.")
        encoded.append((ids, positions))
    _check_lengths(model, [len(ids) for ids, _ in encoded], lambda i: texts[i], desc)
    return _masked_scores(model, encoded, mask_id, pad, batch_size, desc, progress)


def sentence_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    objective: Optional[str] = None,
    **kwargs: Any,
) -> list[SentenceScore]:
    """`causal_log_likelihoods` or `pseudo_log_likelihoods` by ``objective`` (``None``: `infer_objective`);
    ``kwargs`` go to that function."""
    if _check_objective(model, objective) == "causal_lm":
        return causal_log_likelihoods(model, tokenizer, texts, **kwargs)
    return pseudo_log_likelihoods(model, tokenizer, texts, **kwargs)


def conditional_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[str],
    continuations: Sequence[str],
    objective: Optional[str] = None,
    *,
    separator: str = " ",
    **kwargs: Any,
) -> list[SentenceScore]:
    """The score of each continuation given its context: the text ``context + separator + continuation`` scored
    on the tokens after the context's (the separator goes with the continuation, as BPE tokenizers attach a space
    to the word after it; a token that holds only the space is scored). Causal LM: ``log P(continuation |
    context)``. Masked LM: the pseudo-log-likelihood of the continuation's tokens with the context visible (this
    is not next-sentence prediction; no NSP head is used).

    Args:
        model: the model.
        tokenizer: its (fast) tokenizer.
        contexts: the contexts.
        continuations: the continuations, one per context.
        objective (`str`, *optional*): ``causal_lm`` or ``masked_lm`` (default: `infer_objective`).
        separator: what joins context and continuation.
        **kwargs: ``batch_size``, ``progress``, ``desc``.

    Returns:
        `list[SentenceScore]`: per pair, the continuation's sum (and mean) of token log-probabilities.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"got {len(contexts)} contexts and {len(continuations)} continuations.")
    texts = [c + separator + s for c, s in zip(contexts, continuations)]
    spans = [[(len(c), len(t))] for c, t in zip(contexts, texts)]  # the separator goes with the continuation
    return sentence_log_likelihoods(model, tokenizer, texts, objective, spans=spans, **kwargs)


def shared_token_pseudo_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: str = "shared-token pseudo-log-likelihood",
) -> list[tuple[SentenceScore, SentenceScore]]:
    """The masked-LM metric of paired sentences by Nangia et al. (2020): for each pair of sentences, the tokens both share
    (the matching blocks of `difflib.SequenceMatcher` over the token ids, special tokens excluded) are masked one
    at a time in each sentence and ``log P(token | rest)`` is summed; the differing tokens are never scored.

    Returns:
        `list[tuple[SentenceScore, SentenceScore]]`: per pair, the scores of its first and second sentence.

    Raises:
        ValueError: when a pair shares no token, or a sentence is longer than the model's positions (naming it).
    """
    mask_id, pad = _mask_ids(tokenizer)
    encoded = []
    for i, (first, second) in enumerate(pairs):
        (ids_a, keep_a), (ids_b, keep_b) = (text_token_ids(tokenizer, t, None, special=True) for t in (first, second))
        matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
        shared = [(block.a + k, block.b + k) for block in matcher.get_matching_blocks() for k in range(block.size)]
        shared = [(a, b) for a, b in shared if keep_a[a] and keep_b[b]]
        if not shared:
            raise ValueError(f"pair {i} ({first[:40]!r} / {second[:40]!r}) shares no token to score.")
        encoded += [(ids_a, [a for a, _ in shared]), (ids_b, [b for _, b in shared])]
    _check_lengths(model, [len(ids) for ids, _ in encoded], lambda i: pairs[i // 2][i % 2], desc)
    scores = _masked_scores(model, encoded, mask_id, pad, batch_size, desc, progress)
    return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]


def masked_word_log_probs(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    words: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: str = "slot log-probabilities",
) -> list[list[float]]:
    """Masked LM: ``log P(word)`` at the ``[MASK]`` slot of each text, for each of the text's candidate words.

    Args:
        texts: texts with exactly one ``[MASK]``.
        words: per text, the candidate words; each must be one token where it stands (tokenised after the text
            before the slot).

    Returns:
        `list[list[float]]`: per text, the log-probability of each word.

    Raises:
        ValueError: when a word is more than one token (this comparison is defined for single tokens only), or a
            text is longer than the model's positions (naming it).
    """
    from ...data.collators import target_pieces

    mask_id, pad = _mask_ids(tokenizer)
    if len(words) != len(texts):
        raise ValueError(f"got {len(words)} word lists for {len(texts)} texts.")
    encoded, targets = [], []
    for i, (text, candidates) in enumerate(zip(texts, words)):
        if text.count(MASK) != 1:
            raise ValueError(f"text {i} must hold exactly one {MASK}: {text!r}.")
        prefix = text.split(MASK)[0]
        ids = [int(t) for t in tokenizer(text.replace(MASK, tokenizer.mask_token))["input_ids"]]
        positions = [t for t, v in enumerate(ids) if v == mask_id]
        if len(positions) != 1:
            raise ValueError(f"text {i}: expected one mask token after encoding, found {len(positions)}.")
        token_ids = []
        for word in candidates:
            pieces = target_pieces(tokenizer, prefix, word)
            if len(pieces) != 1:
                raise ValueError(
                    f"text {i}: {word!r} is {len(pieces)} tokens {tokenizer.convert_ids_to_tokens(pieces)} here; the "
                    "masked-LM slot comparison needs single-token words."
                )
            token_ids.append(pieces[0])
        encoded.append((ids, positions[0]))
        targets.append(token_ids)
    _check_lengths(model, [len(ids) for ids, _ in encoded], lambda i: texts[i], desc)
    device = model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    result: list[list[float]] = [[] for _ in encoded]
    with torch.no_grad(), eval_mode(model):
        for chunk in _progress(list(batches(order, batch_size)), desc, progress):
            length = max(len(encoded[i][0]) for i in chunk)
            input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), length), dtype=torch.long)
            for b, i in enumerate(chunk):
                input_ids[b, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
                attention[b, : len(encoded[i][0])] = 1
            logits = logits_of(model, input_ids.to(device), attention.to(device))
            rows = torch.arange(len(chunk), device=logits.device)
            at_mask = float_logits(logits[rows, torch.tensor([encoded[i][1] for i in chunk], device=logits.device)])
            lp = torch.log_softmax(at_mask, dim=-1).double().cpu()
            for b, i in enumerate(chunk):
                result[i] = [float(lp[b, t]) for t in targets[i]]
    return result
