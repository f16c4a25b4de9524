"""Measuring rewrites ``theta + lr * d(feature_factor)`` on prepared rows, neutral text and control rows.

`RewriteInputs` tokenises the rows, the neutral texts (for the LMS) and the control rows once, captures the hidden
states below the first edited block (`gradiend_peft.evaluation.block_skip`), and then measures any number of candidates
with forward passes only: each candidate is applied in place (run-time steering with a cached shifted weight, or a
merge that is undone) and removed again. `search_rewrite` measures its grid this way; `measure_rewrites` measures
given rewrites, e.g. a chosen one on held-out rows the search never saw.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ._common import as_rows, as_texts, eval_mode, model_parts
from .scoring import (
    bias_indices,
    class_words_from_rows,
    language_modeling_score,
    prepare_lms,
    prepare_slots,
    slot_probabilities,
)
from .policies import CandidateMetrics
from .block_skip import BlockSkip

__all__ = ["RewriteInputs", "measure_rewrites"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def applied(tuner, name: str, feature_factor: float, lr: float, apply: str) -> Iterator[None]:
    """The rewrite acts for the duration: steered (``apply="steer"``, a cached shifted weight per layer) or merged
    with a kept original and unmerged after (``"merge"``); ``lr = 0`` is the base model."""
    if lr == 0.0:
        yield
    elif apply == "steer":
        with tuner.steer(feature_factor, lr, [name], cache=True):  # one shifted weight per candidate, many batches
            yield
    else:
        tuner.merge_adapter([name], feature_factor=feature_factor, lr=lr, keep_original=True)
        try:
            yield
        finally:
            tuner.unmerge_adapter()


def preference(probs: torch.Tensor, row_classes: Sequence[Optional[str]], classes: Sequence[str]) -> float:
    """The share of rows whose own class (``row_classes``) is more probable than every other class: the control
    accuracy on control rows, or the preference for the class each row's ``factual_class`` names on other rows."""
    own = torch.tensor([classes.index(c) for c in row_classes])
    own_p = probs[torch.arange(len(own)), own]
    others = probs.clone()
    others[torch.arange(len(own)), own] = -math.inf
    return float((own_p > others.max(dim=1).values).double().mean())


LOG_FLOOR = float(torch.finfo(torch.float32).tiny)
"""Probabilities come from float32 softmaxes: below this one they are 0 or subnormal, so logs are taken of at least
this much (a margin is then bounded instead of infinite)."""


def log_odds(probs: torch.Tensor, row_classes: Sequence[Optional[str]], classes: Sequence[str]) -> torch.Tensor:
    """Each row's ``log P(own class) - log P(other class)`` (two classes), ``(N,)`` float64: positive where the row's
    own class is the more probable; probabilities are floored at `LOG_FLOOR` before the log."""
    if len(classes) != 2:
        raise ValueError(f"log-odds compare two classes; got {list(classes)}.")
    own = torch.tensor([classes.index(c) for c in row_classes])
    logs = probs.double().clamp_min(LOG_FLOOR).log()
    rows = torch.arange(len(own))
    return logs[rows, own] - logs[rows, 1 - own]


def control_scores(probs: torch.Tensor, row_classes: Sequence[Optional[str]],
                   classes: Sequence[str]) -> tuple[float, float]:
    """``(accuracy, margin)`` of control rows: the share whose own class is the more probable (`preference`) and the
    mean of `log_odds`, ``mean_i log P_i(right) / P_i(wrong)``: how much evidence for the right class is left, which
    accuracy alone hides until a row flips."""
    return preference(probs, row_classes, classes), float(log_odds(probs, row_classes, classes).mean())


def candidate_metrics(probs: torch.Tensor, base_probs: Optional[torch.Tensor], row_classes, classes, ff: float,
                      lr: float, lms, control: Optional[tuple[float, float]], stage: str) -> CandidateMetrics:
    """`CandidateMetrics` from a candidate's per-row class probabilities, its LMS and its control scores
    (`control_scores`: accuracy and margin, ``None`` without control rows)."""
    by_class, counts = {}, {}
    for d in classes:
        rows = torch.tensor([c == d for c in row_classes])
        counts[d] = int(rows.sum())
        by_class[d] = {c: float(probs[rows, j].mean()) if counts[d] else math.nan for j, c in enumerate(classes)}
    indices = bias_indices(probs, classes)
    shift = 0.0 if base_probs is None else float((probs - base_probs).abs().mean())
    return CandidateMetrics(
        feature_factor=float(ff), lr=float(lr), lms=lms.lms,
        class_probs={c: float(probs[:, j].mean()) for j, c in enumerate(classes)}, probs_by_class=by_class,
        row_counts=counts, bpi=indices["bpi"], favour=indices["favour"], mean_abs_gap=indices["mean_abs_gap"],
        control_accuracy=None if control is None else control[0],
        control_margin=None if control is None else control[1],
        perplexity=lms.perplexity, mean_abs_shift=shift, stage=stage,
    )


class RewriteInputs:
    """Rows, neutral texts and control rows prepared once for measuring many rewrites (see the module docstring).

    Args:
        model (`peft.PeftModel` or `GradiendModel`): the GRADIEND model, unmerged and unsteered.
        rows: rows with one ``[MASK]`` (``text``, ``factual``, ``factual_class``).
        neutral: neutral texts for the LMS.
        tokenizer: the base model's tokenizer.
        control (*optional*): rows whose class their context decides.
        classes (`Mapping[str, Sequence[str]]`, *optional*): ``{class: words}`` measured (default: the rows' words;
            a `Feature` gives its pair's words). Exactly two classes.
        apply (`str`): ``"steer"`` or ``"merge"`` (see `applied`).
        skip_unchanged (`bool`): skip the blocks below the first edited one where that is exact.
        batch_size, mask_fraction, seed, max_length: as for `search_rewrite`.
        adapter_name (`str`, *optional*): the adapter (default: the active one).
    """

    def __init__(self, model: nn.Module, rows: Any, neutral: Any, *, tokenizer: Any, control: Any = None,
                 classes: Any = None, apply: str = "steer", skip_unchanged: bool = True, batch_size: int = 32,
                 mask_fraction: float = 0.15, seed: int = 0, max_length: Optional[int] = None,
                 adapter_name: Optional[str] = None) -> None:
        self.tuner, self.name, config = model_parts(model, adapter_name)
        if apply not in ("steer", "merge"):
            raise ValueError(f"apply must be 'steer' or 'merge', got {apply!r}.")
        if self.tuner.merged_adapter_names():
            raise ValueError("The adapter is merged; call unmerge_adapter() before measuring rewrites.")
        if self.tuner.steering_active:
            raise ValueError("The model is being steered; call clear_steering() before measuring rewrites.")
        self.apply, self.config = apply, config
        self.rows = as_rows(rows)
        if hasattr(classes, "pair"):  # a Feature: its pair's words
            words = {c: list(classes.classes[c]) for c in classes.pair}
        else:
            words = dict(classes) if classes is not None else class_words_from_rows(self.rows)
        if len(words) != 2:
            raise ValueError(f"Rewrites are measured on two classes; got {list(words)}.")
        self.words, self.classes = words, tuple(words)
        objective = config.objective
        self.slots = prepare_slots(self.rows, tokenizer, objective, classes=words, batch_size=batch_size)
        self.lms_inputs = prepare_lms(as_texts(neutral), tokenizer, objective, mask_fraction=mask_fraction,
                                      seed=seed, batch_size=batch_size, max_length=max_length)
        self.control_slots = None
        if control is not None:
            control_rows = as_rows(control, "control")
            unknown = {r.get("factual_class") for r in control_rows} - set(self.classes)
            if unknown:
                raise ValueError(f"Control rows must have a factual_class among {list(self.classes)}; found "
                                 f"{sorted(map(str, unknown))}.")
            self.control_slots = prepare_slots(control_rows, tokenizer, objective, classes=words, batch_size=batch_size)
        self.model = self.tuner.model
        self.skip, self.hidden = self._prepare_skip() if skip_unchanged else (None, {})

    def _prepare_skip(self) -> tuple[Optional[BlockSkip], dict]:
        skip = BlockSkip.find(self.tuner, self.name)
        if skip is None:
            return None, {}
        with eval_mode(self.model):
            hidden = {"rows": skip.capture(self.model, self.slots.batches),
                      "lms": skip.capture(self.model, self.lms_inputs.batches)}
            if self.control_slots is not None:
                hidden["control"] = skip.capture(self.model, self.control_slots.batches)
            if not skip.verified(self.model, self.slots.batches[0], hidden["rows"][0]):
                return None, {}
        logger.info("Skipping blocks 0-%d in every candidate (they are not edited).", skip.first - 1)
        return skip, hidden

    def measure(self, feature_factor: float, lr: float) -> tuple[torch.Tensor, Any, Optional[tuple[float, float]]]:
        """``(row probabilities (N, 2), LMSResult, control scores or None)`` of one rewrite, forward passes only
        (control scores: `control_scores`, accuracy and margin)."""
        with eval_mode(self.model), torch.no_grad(), applied(self.tuner, self.name, feature_factor, lr, self.apply), \
                self.skip.skipping() if self.skip else contextlib.nullcontext():
            probs = slot_probabilities(self.model, self.slots, self.hidden.get("rows"))
            lms = language_modeling_score(self.model, self.lms_inputs, self.hidden.get("lms"))
            control = None
            if self.control_slots is not None:
                control_probs = slot_probabilities(self.model, self.control_slots, self.hidden.get("control"))
                control = control_scores(control_probs, self.control_slots.row_classes, self.classes)
        return probs, lms, control


def measure_rewrites(model: nn.Module, rows: Any, neutral: Any, rewrites: Sequence[tuple[float, float]], *,
                     tokenizer: Any, control: Any = None, classes: Any = None,
                     **options: Any) -> list[tuple[CandidateMetrics, torch.Tensor]]:
    """Measures given rewrites ``(feature_factor, lr)`` (``lr = 0``: the base model) on rows, neutral text and
    control rows, e.g. a chosen rewrite on held-out rows the search never saw.

    Args:
        model, rows, neutral, tokenizer, control, classes: as for `RewriteInputs`.
        rewrites (`Sequence[tuple[float, float]]`): the ``(feature_factor, lr)`` pairs.
        **options: more `RewriteInputs` options (``apply``, ``skip_unchanged``, ``batch_size``, ``adapter_name``...).

    Returns:
        `list`: per rewrite, its `CandidateMetrics` (``mean_abs_shift`` against the first rewrite) and its row
        probabilities ``(N, 2)`` in the rows' order.
    """
    inputs = RewriteInputs(model, rows, neutral, tokenizer=tokenizer, control=control, classes=classes, **options)
    results, first = [], None
    for ff, lr in rewrites:
        probs, lms, control = inputs.measure(ff, lr)
        metrics = candidate_metrics(probs, first, inputs.slots.row_classes, inputs.classes, ff, lr, lms,
                                    control, "base" if lr == 0 else "measured")
        first = probs if first is None else first
        results.append((metrics, probs))
    return results


def rows_signature(inputs: RewriteInputs, name: str, apply: str) -> tuple:
    """What a shared measurement cache must agree on: the adapter, the mode, and the measured rows and texts."""
    import hashlib

    def digest(batches) -> Optional[str]:
        if batches is None:
            return None
        hasher = hashlib.sha256()
        for batch in batches:
            for key in sorted(batch):
                value = batch[key]
                if isinstance(value, torch.Tensor):
                    hasher.update(key.encode())
                    hasher.update(value.detach().cpu().contiguous().numpy().tobytes())
        return hasher.hexdigest()

    control = inputs.control_slots
    return (name, apply, tuple(inputs.classes), inputs.slots.row_classes, digest(inputs.slots.batches),
            digest(inputs.lms_inputs.batches), None if control is None else (control.row_classes, digest(control.batches)))

