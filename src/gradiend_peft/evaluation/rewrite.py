"""The rewrite search: which ``(feature_factor, lr)`` to merge, ``theta' = theta + lr * d(feature_factor)``.

Every candidate is applied in place (run-time steering by default, or a merge that is undone), measured with
forward passes only, and removed again: the model is never copied and ends bit-identical. Two stages:

1. the grid: every feature factor with every learning rate (default: the reference's 16 rates, 100 ... 0.001),
   ascending, a feature factor's sweep stopping early once two rates in a row fail a guard (the LMS floor or the
   controls: the edit has gone too far, and larger rates only go further);
2. refinement: the useful rates span less than a decade and often sit between two grid points, so for the best
   feature factors the search adds geometric points (``lr_a (lr_b / lr_a)^(j / (p + 1))``, ``j = 1..p``) inside the
   intervals around (a) the best feasible rate (see `refinement_lrs`), (b) the last rate before the edit starts to act (``mean_abs_shift
   >= act_threshold * mean base probability``) and (c) the last feasible rate before the guards fail; repeated
   ``refine_rounds`` times, each round around the new neighbours.

Candidates are scored and guarded by a policy (`gradiend_peft.evaluation.policies`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ._common import eval_mode, model_parts
from .measure import RewriteInputs, candidate_metrics, rows_signature
from .policies import Candidate, CandidateMetrics, Policy, parse_policy, score_candidates, select_best
from .result import RewriteResult

__all__ = ["REFERENCE_LEARNING_RATES", "RewriteResult", "refinement_lrs", "search_rewrite"]

logger = logging.getLogger(__name__)

REFERENCE_LEARNING_RATES = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
"""The reference implementation's learning-rate grid."""


def refinement_lrs(points: Sequence[tuple[float, bool, float, bool]], n_points: int = 3) -> list[float]:
    """New learning rates for one feature factor, from its measured ``(lr, feasible, score, acts)`` points.

    Intervals refined (between neighbouring measured rates): above the best feasible rate, and below it too unless
    the next rate fails a guard (then the optimum sits at the guard, above), the one in which the edit starts to act (last rate not acting, first acting), and the one in which the guards start to fail
    (last feasible rate, next infeasible). Each gets ``n_points`` geometric interior points; rates already measured
    are not repeated. Rates must be positive.
    """
    pts = sorted(points)
    lrs = [p[0] for p in pts]
    if any(lr <= 0 for lr in lrs):
        raise ValueError("refinement needs positive learning rates.")
    intervals: set[tuple[int, int]] = set()
    feasible = [i for i, p in enumerate(pts) if p[1] and math.isfinite(p[2])]
    if feasible:
        best = min(feasible, key=lambda i: (-pts[i][2], pts[i][0]))
        intervals.add((best, best + 1))
        if best + 1 >= len(pts) or pts[best + 1][1]:  # an interior optimum (not one cut off by a guard): both sides
            intervals.add((best - 1, best))
    for i in range(len(pts) - 1):
        if not pts[i][3] and pts[i + 1][3]:
            intervals.add((i, i + 1))
            break
    for i in range(len(pts) - 1):
        if pts[i][1] and not pts[i + 1][1]:
            intervals.add((i, i + 1))
            break
    new: list[float] = []
    for a, b in sorted(intervals):
        if a < 0 or b >= len(pts):
            continue
        ratio = lrs[b] / lrs[a]
        for j in range(1, n_points + 1):
            lr = lrs[a] * ratio ** (j / (n_points + 1))
            if all(abs(lr - x) > 1e-9 * x for x in lrs + new):
                new.append(lr)
    return sorted(new)


def search_rewrite(
    model: nn.Module,
    rows: Any,
    neutral: Any,
    *,
    tokenizer: Any,
    policy: "str | Policy" = "balance",
    feature_factors: Optional[Sequence[float]] = None,
    lrs: Optional[Sequence[float]] = None,
    control: Any = None,
    classes: Optional[Mapping[str, Sequence[str]]] = None,
    lms_floor: Optional[float] = 0.99,
    control_floor: Optional[float] = 0.95,
    refine: bool = True,
    refine_rounds: int = 2,
    refine_points: int = 3,
    refine_top: Optional[int] = 3,
    act_threshold: float = 0.05,
    early_stop: bool = True,
    require_improvement: bool = True,
    apply: str = "steer",
    batch_size: int = 32,
    mask_fraction: float = 0.15,
    seed: int = 0,
    max_length: Optional[int] = None,
    adapter_name: Optional[str] = None,
    progress: Optional[bool] = None,
    measurements: Optional[dict] = None,
    skip_unchanged: bool = True,
) -> RewriteResult:
    """Searches ``(feature_factor, lr)`` for the rewrite that serves ``policy`` best (see the module docstring).

    Args:
        model (`peft.PeftModel` or `GradiendModel`): the GRADIEND model, unmerged.
        rows: evaluation rows (``text`` with one ``[MASK]``, ``factual``, ``factual_class``, ``alternative``,
            ``alternative_class``), e.g. ``pairs["test"]``.
        neutral: neutral texts for the LMS (a list or a `datasets.Dataset` with ``text``).
        tokenizer: the base model's tokenizer.
        policy: a `Policy` or ``"balance"``, ``"strengthen:<class>"``, ``"weaken:<class>"``, ``"favour:<class>"``.
        feature_factors: the feature factors to search (default: the policy's; ``(1, -1)``, balance adds 0 and
            ``±0.25``, ``±0.5``).
        lrs: the learning rates of the grid, positive (default `REFERENCE_LEARNING_RATES`).
        control: rows whose class is fixed by their context (``text``, ``factual``, ``factual_class``); they must
            keep their answer (the control guard).
        classes: ``{class: words}`` whose probabilities are measured (default: the words of the rows).
        lms_floor (`float`, *optional*, defaults to ``0.99``): the LMS guard: a candidate must keep
            ``lms >= lms_floor * base lms`` (``None``: off).
        control_floor (`float`, *optional*, defaults to ``0.95``): the control guard: with ``control`` rows, a
            candidate must keep ``control_accuracy >= control_floor * base control_accuracy`` (``None``: off).
        refine (`bool`, *optional*, defaults to ``True``): run the refinement stage after the grid (``False``: the
            grid only).
        refine_rounds (`int`, *optional*, defaults to ``2``): how many rounds of refinement, each round around the
            new neighbours.
        refine_points (`int`, *optional*, defaults to ``3``): the geometric points added inside each refined
            interval (see `refinement_lrs`).
        refine_top (`int`, *optional*, defaults to ``3``): how many of the best feature factors are refined
            (``None``: all).
        act_threshold: the edit acts once ``mean_abs_shift >= act_threshold * mean base probability``.
        early_stop: stop a feature factor's sweep after two rates in a row that fail a guard.
        require_improvement: choose nothing unless a candidate beats the base model's score.
        apply: ``"steer"`` (run-time steering; no weight is written) or ``"merge"`` (merge with a kept original and
            unmerge: faster forwards, but a copy of the target weights while a candidate is applied).
        batch_size (`int`, *optional*, defaults to ``32``): rows, control rows or neutral texts per forward pass.
        mask_fraction (`float`, *optional*, defaults to ``0.15``): the share of maskable tokens masked per neutral
            text for the LMS (masked LM).
        seed (`int`, *optional*, defaults to ``0``): seeds the mask draw on the neutral texts (masked LM).
        max_length (`int`, *optional*, defaults to ``None``): truncate neutral texts to this many tokens (``None``:
            no truncation).
        adapter_name: the adapter (default: the active one).
        progress: show a progress bar (default: tqdm decides).
        measurements (`dict`, *optional*): a dict shared by several searches of the same model on the same rows,
            neutral texts and controls (e.g. one search per policy): candidates already measured are taken from it,
            new ones are added. Only the scoring differs between policies, so a second policy pays only for the
            candidates the first did not measure. A dict filled with other inputs is refused.
        skip_unchanged (`bool`, *optional*, defaults to ``True``): compute the hidden states below the first edited
            block once per batch and run only the edited blocks per candidate (see
            `gradiend_peft.evaluation.block_skip`; checked against full forward passes, which are used where it does not
            hold). ``False``: full forward passes for every candidate.
    """
    started = time.perf_counter()
    tuner, name, config = model_parts(model, adapter_name)
    policy = parse_policy(policy)
    inputs = RewriteInputs(model, rows, neutral, tokenizer=tokenizer, control=control, classes=classes, apply=apply,
                           skip_unchanged=skip_unchanged, batch_size=batch_size, mask_fraction=mask_fraction,
                           seed=seed, max_length=max_length, adapter_name=adapter_name)
    names, slots, lms_inputs = inputs.classes, inputs.slots, inputs.lms_inputs
    policy.check_classes(names)
    if inputs.control_slots is None:
        logger.warning("search_rewrite without control rows: only the LMS floor guards the selection.")
    ffs = list(dict.fromkeys(float(f) for f in (policy.default_feature_factors if feature_factors is None else feature_factors)))
    if not config.decoder_bias and feature_factors is None:
        ffs = [f for f in ffs if f != 0.0]
    grid_lrs = sorted({float(lr) for lr in (REFERENCE_LEARNING_RATES if lrs is None else lrs)})
    if not ffs or not grid_lrs or any(lr <= 0 or not math.isfinite(lr) for lr in grid_lrs):
        raise ValueError(f"Need feature factors and positive, finite learning rates; got {ffs} and {grid_lrs}.")
    objective = config.objective
    forward = tuner.model
    probs_of: dict[tuple[float, float], torch.Tensor] = {}
    if measurements is not None:
        signature = rows_signature(inputs, name, apply)
        if measurements.setdefault("inputs", signature) != signature:
            raise ValueError("The measurements dict was filled by a search on other rows, texts, controls or adapter; "
                             "pass a fresh dict for these inputs.")
        cache = measurements.setdefault("candidates", {})
    else:
        cache = {}

    def measure(ff: float, lr: float, stage: str, base_probs: Optional[torch.Tensor]) -> CandidateMetrics:
        key = (float(ff), float(lr))
        if key not in cache:
            cache[key] = inputs.measure(ff, lr)
        probs, lms, control = cache[key]
        probs_of[(ff, lr)] = probs
        return candidate_metrics(probs, base_probs, slots.row_classes, names, ff, lr, lms, control, stage)

    bar = tqdm(total=len(ffs) * len(grid_lrs) + 1, desc=f"rewrite ({policy})", unit="cand",
               disable=None if progress is None else not progress)
    measured: list[CandidateMetrics] = []
    with eval_mode(forward), bar:
        base_metrics = measure(0.0, 0.0, "base", None)
        base_probs = probs_of[(0.0, 0.0)]
        bar.update()

        def guards_pass(m: CandidateMetrics) -> bool:
            return score_candidates(policy, [m], base_metrics, lms_floor=lms_floor, control_floor=control_floor)[0].feasible

        logger.info("base: LMS %.4f, P %s, control accuracy %s, margin %s", base_metrics.lms,
                    base_metrics.class_probs, base_metrics.control_accuracy, base_metrics.control_margin)
        for ff in ffs:
            failures = 0
            for i, lr in enumerate(grid_lrs):
                m = measure(ff, lr, "grid", base_probs)
                measured.append(m)
                bar.update()
                failures = failures + 1 if not guards_pass(m) else 0
                if early_stop and failures >= 2:
                    bar.update(len(grid_lrs) - i - 1)
                    logger.info("ff %+g: two rates in a row fail a guard (up to lr %g); larger rates skipped", ff, lr)
                    break
        act_level = act_threshold * float(base_probs.mean())

        def scored() -> list[Candidate]:
            return score_candidates(policy, measured, base_metrics, lms_floor=lms_floor, control_floor=control_floor)

        for _ in range(refine_rounds if refine else 0):
            candidates = scored()
            by_ff: dict[float, list[Candidate]] = {}
            for c in candidates:
                by_ff.setdefault(c.feature_factor, []).append(c)
            ranked = sorted(by_ff, key=lambda f: -max((c.score for c in by_ff[f] if c.feasible), default=-math.inf))
            new = [(ff, lr) for ff in ranked[: refine_top or len(ranked)] for lr in refinement_lrs(
                [(c.lr, c.feasible, c.score, c.metrics.mean_abs_shift >= act_level) for c in by_ff[ff]], refine_points)]
            if not new:
                break
            bar.total += len(new)
            bar.refresh()
            for ff, lr in new:
                measured.append(measure(ff, lr, "refine", base_probs))
                bar.update()
    candidates = scored()
    base = score_candidates(policy, [base_metrics], base_metrics, lms_floor=lms_floor, control_floor=control_floor)[0]
    best = select_best(candidates, base, require_improvement=require_improvement)
    transitions = {}
    for ff in ffs:
        own = sorted((c for c in candidates if c.feature_factor == ff), key=lambda c: c.lr)
        acts = next((c.lr for c in own if c.metrics.mean_abs_shift >= act_level), None)
        fails = next((b.lr for a, b in zip(own, own[1:]) if a.feasible and not b.feasible), None)
        transitions[f"{ff:g}"] = {"acts_from": acts, "fails_from": fails}
    if best is None:
        logger.warning("No rewrite candidate passed the guards and improved on the base score %.4f.", base.score)
    else:
        logger.info("chosen: feature_factor %g, lr %g, score %.4f (base %.4f), LMS %.4f", best.feature_factor, best.lr,
                    best.score, base.score, best.lms)
    to_tuple = lambda t: tuple(tuple(float(x) for x in row) for row in t.tolist())  # noqa: E731
    return RewriteResult(
        policy=policy.to_dict(), classes=names, base=base, candidates=tuple(candidates), best=best,
        lms_floor=lms_floor, control_floor=control_floor, row_classes=slots.row_classes,
        base_row_probs=to_tuple(base_probs),
        best_row_probs=None if best is None else to_tuple(probs_of[(best.feature_factor, best.lr)]),
        transitions=transitions,
        settings={"objective": objective, "apply": apply, "n_rows": len(inputs.rows), "n_neutral_texts": lms_inputs.n_texts,
                  "n_lms_tokens": lms_inputs.n_tokens,
                  "n_control": 0 if inputs.control_slots is None else len(inputs.control_slots),
                  "feature_factors": ffs, "lrs": grid_lrs, "seconds": time.perf_counter() - started,
                  "skipped_blocks": 0 if inputs.skip is None else inputs.skip.first},
    )
