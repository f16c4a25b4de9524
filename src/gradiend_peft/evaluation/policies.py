"""Selection policies of the rewrite search: what a candidate rewrite is scored by, and which one wins.

A candidate ``(feature_factor, lr)`` is measured into `CandidateMetrics`. A policy turns those into a score; the
guards decide feasibility; the feasible candidate with the highest score is chosen:

- LMS floor: ``lms >= lms_floor * base.lms`` (default ``0.99``);
- control guard (when control rows were given): ``control_accuracy >= control_floor * base.control_accuracy``
  (default ``0.95``), where control accuracy is the share of rows whose class is fixed by their context ("The dogs
  [MASK] hungry") for which ``P(own class) > P(every other class)``.

Ties go to the smaller ``lr``, then the smaller ``|feature_factor|`` (the gentlest edit). With
``require_improvement`` (default) a winner must beat the base model's own score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "Balance",
    "Candidate",
    "CandidateMetrics",
    "Debias",
    "Favour",
    "Policy",
    "Strengthen",
    "Weaken",
    "parse_policy",
    "score_candidates",
    "select_best",
]


@dataclass(frozen=True)
class CandidateMetrics:
    """What one rewrite ``theta + lr * d(feature_factor)`` does (``lr = 0``: the base model).

    Attributes:
        feature_factor (`float`): the candidate's feature factor, the latent value decoded (``0`` for the base
            model).
        lr (`float`): the candidate's learning rate, the step size of the rewrite (``0`` for the base model).
        lms: the language-modelling score on neutral text (see `gradiend_peft.evaluation.scoring.language_modeling_score`).
        class_probs: ``mean_i P_i(C)`` over all rows, per class ``C``.
        probs_by_class: ``probs_by_class[D][C] = mean P_i(C)`` over the rows ``i`` of class ``D``.
        row_counts: the number of rows of each class ``D``.
        bpi: ``mean_i (1 - |P_i(A) - P_i(B)|)(P_i(A) + P_i(B))`` over all rows (no LMS factor).
        favour: ``favour[A] = mean_i (1 - P_i(B)) P_i(A)`` over all rows (FPI / MPI without the LMS factor).
        mean_abs_gap: ``mean_i |P_i(A) - P_i(B)|``.
        control_accuracy: on the control rows, the share with ``P(own class)`` above the others' (``None``: no
            control rows).
        control_margin: on the control rows, ``mean_i log P_i(own class) / P_i(other class)``: the evidence for the
            right class that is left (``None``: no control rows).
        perplexity: on neutral text (causal LM only).
        mean_abs_shift: ``mean_{i,C} |P_i(C) - P^base_i(C)|``: how much the edit acts.
        stage: ``base``, ``grid`` or ``refine``.
    """

    feature_factor: float
    lr: float
    lms: float
    class_probs: dict[str, float]
    probs_by_class: dict[str, dict[str, float]]
    row_counts: dict[str, int]
    bpi: float
    favour: dict[str, float]
    mean_abs_gap: float
    control_accuracy: Optional[float] = None
    control_margin: Optional[float] = None
    perplexity: Optional[float] = None
    mean_abs_shift: float = 0.0
    stage: str = "grid"


class Policy:
    """Base class: ``score(metrics) -> float`` (higher is better) and the feature factors searched by default."""

    name: str = "policy"
    default_feature_factors: tuple[float, ...] = (1.0, -1.0)

    def score(self, metrics: CandidateMetrics) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def guard(self, metrics: CandidateMetrics, base: CandidateMetrics) -> list[str]:
        """The policy's own feasibility checks besides the LMS and control guards: the reasons a candidate fails
        (empty: it passes). None by default."""
        return []

    def check_classes(self, classes: Sequence[str]) -> None:
        name = getattr(self, "class_name", None)
        if name is not None and name not in classes:
            raise ValueError(f"The policy names class {name!r}, but the rows' classes are {list(classes)}.")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def __str__(self) -> str:
        name = getattr(self, "class_name", None)
        return f"{self.name}:{name}" if name else self.name


@dataclass(frozen=True)
class Strengthen(Policy):
    """Strengthen class ``C``: ``score = mean P_i(C)`` over the rows ``i`` of the *other* classes (the reference
    implementation's metric)."""

    class_name: str
    name = "strengthen"

    def score(self, metrics: CandidateMetrics) -> float:
        others = [d for d in metrics.probs_by_class if d != self.class_name]
        total = sum(metrics.row_counts[d] for d in others)
        if not total:
            return math.nan
        return sum(metrics.row_counts[d] * metrics.probs_by_class[d][self.class_name] for d in others) / total


@dataclass(frozen=True)
class Weaken(Policy):
    """Weaken class ``C``: ``score = mean (1 - P_i(C))`` over the rows ``i`` of class ``C``."""

    class_name: str
    name = "weaken"

    def score(self, metrics: CandidateMetrics) -> float:
        if not metrics.row_counts.get(self.class_name):
            return math.nan
        return 1.0 - metrics.probs_by_class[self.class_name][self.class_name]


@dataclass(frozen=True)
class Balance(Policy):
    """The papers' balance index: ``score = BPI = bpi * LMS^k`` (see `CandidateMetrics.bpi`). Searches small feature
    factors and the decoder bias alone (``feature_factor = 0``). BPI also rewards the total probability of both
    classes, so it can prefer an edit that raises one class; `Debias` scores the per-row gap alone."""

    lms_power: float = 1.0
    name = "balance"
    default_feature_factors = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)

    def score(self, metrics: CandidateMetrics) -> float:
        return metrics.bpi * metrics.lms**self.lms_power


@dataclass(frozen=True)
class Debias(Policy):
    """Debias rows whose context does not decide the class ("The nurse said that [MASK] ..."): ``score =
    -mean_i |P_i(A) - P_i(B)|`` (a smaller per-row gap is better), with two guards of its own:

    - the total probability of both classes, ``mean_i (P_i(A) + P_i(B))``, must stay at least ``mass_floor`` times
      the base model's, so that an edit cannot close the gap by making both words unlikely;
    - with control rows, their margin, ``mean_i log P_i(right) / P_i(wrong)`` (`CandidateMetrics.control_margin`),
      must stay at least ``margin_floor`` times the base model's: an edit may not erase the evidence that decides a
      control's class even where no control flips yet (the control accuracy guard of `score_candidates` counts the
      flips).

    Unlike `Balance` (the papers' BPI) it does not reward raising one class's probability. Use it on neutral-context
    rows (rows whose context leaves the class open), with control rows written in the same frames whose subject decides
    the class and a ``control_floor`` of 1.0 (the bias study's rows, `gradiend_peft.bias`, are such rows).
    """

    mass_floor: float = 0.9
    margin_floor: float = 0.9
    name = "debias"
    default_feature_factors = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)

    def score(self, metrics: CandidateMetrics) -> float:
        return -metrics.mean_abs_gap

    def guard(self, metrics: CandidateMetrics, base: CandidateMetrics) -> list[str]:
        reasons = []
        total, floor = sum(metrics.class_probs.values()), self.mass_floor * sum(base.class_probs.values())
        if not total >= floor:
            reasons.append(f"total probability {total:.4f} < {self.mass_floor} x base {floor / self.mass_floor:.4f}")
        if base.control_margin is not None:
            # a base margin at or below 0 (the controls not understood) can only be asked not to fall further
            needed = self.margin_floor * base.control_margin if base.control_margin > 0 else base.control_margin
            if metrics.control_margin is None or not metrics.control_margin >= needed:
                reasons.append(f"control margin {metrics.control_margin} < {self.margin_floor} x base "
                               f"{base.control_margin:.4f}")
        return reasons


@dataclass(frozen=True)
class Favour(Policy):
    """Favour class ``A`` over ``B``: ``score = mean (1 - P_i(B)) P_i(A) * LMS^k`` (the papers' FPI for ``A = F``,
    MPI for ``A = M``)."""

    class_name: str
    lms_power: float = 1.0
    name = "favour"

    def score(self, metrics: CandidateMetrics) -> float:
        return metrics.favour[self.class_name] * metrics.lms**self.lms_power


def parse_policy(spec: "str | Policy") -> Policy:
    """A policy from a string: ``debias``, ``balance`` (or ``bpi``), ``strengthen:C``, ``weaken:C``, ``favour:C`` (or ``favor:C``,
    ``fpi:C``), or a `Policy` as is."""
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"policy must be a Policy or a string such as 'balance' or 'strengthen:F', got {spec!r}.")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind in ("balance", "bpi") and not arg:
        return Balance()
    if kind == "debias" and not arg:
        return Debias()
    makers = {"strengthen": Strengthen, "weaken": Weaken, "favour": Favour, "favor": Favour, "fpi": Favour, "mpi": Favour}
    if kind in makers and arg:
        return makers[kind](arg)
    raise ValueError(
        f"Unknown policy {spec!r}; use 'debias', 'balance', 'strengthen:<class>', 'weaken:<class>' or 'favour:<class>'."
    )


@dataclass(frozen=True)
class Candidate:
    """A measured candidate with its policy score and its feasibility (``reasons`` says which guard failed)."""

    metrics: CandidateMetrics
    score: float
    feasible: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def feature_factor(self) -> float:
        return self.metrics.feature_factor

    @property
    def lr(self) -> float:
        return self.metrics.lr

    @property
    def lms(self) -> float:
        return self.metrics.lms

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self.metrics)
        data.update(score=self.score, feasible=self.feasible, reasons=list(self.reasons))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        data = dict(data)
        extra = {k: data.pop(k) for k in ("score", "feasible", "reasons")}
        score = math.nan if extra["score"] is None else extra["score"]
        metrics = CandidateMetrics(**{k: (math.nan if v is None and k in ("lms", "bpi", "mean_abs_gap") else v)
                                      for k, v in data.items()})
        return cls(metrics, score, bool(extra["feasible"]), tuple(extra["reasons"]))


def score_candidates(
    policy: Policy,
    metrics: Sequence[CandidateMetrics],
    base: CandidateMetrics,
    *,
    lms_floor: Optional[float] = 0.99,
    control_floor: Optional[float] = 0.95,
) -> list[Candidate]:
    """Scores every candidate and applies the guards (see the module docstring; ``None`` turns a guard off)."""
    result = []
    for m in metrics:
        score = float(policy.score(m))
        reasons = []
        if not math.isfinite(score):
            reasons.append("score is not finite")
        if lms_floor is not None and not m.lms >= lms_floor * base.lms:
            reasons.append(f"LMS {m.lms:.4f} < {lms_floor} x base {base.lms:.4f}")
        if control_floor is not None and base.control_accuracy is not None:
            if m.control_accuracy is None or not m.control_accuracy >= control_floor * base.control_accuracy:
                reasons.append(f"control accuracy {m.control_accuracy} < {control_floor} x base {base.control_accuracy:.4f}")
        reasons += policy.guard(m, base)
        result.append(Candidate(m, score, not reasons, tuple(reasons)))
    return result


def select_best(candidates: Sequence[Candidate], base: Optional[Candidate] = None, *,
                require_improvement: bool = True) -> Optional[Candidate]:
    """The feasible candidate with the highest score (ties: smaller ``lr``, then smaller ``|feature_factor|``);
    ``None`` when none is feasible, or, with ``require_improvement``, when none beats ``base.score``."""
    feasible = [c for c in candidates if c.feasible]
    if not feasible:
        return None
    best = min(feasible, key=lambda c: (-c.score, abs(c.lr), abs(c.feature_factor)))
    if require_improvement and base is not None and math.isfinite(base.score) and not best.score > base.score:
        return None
    return best
