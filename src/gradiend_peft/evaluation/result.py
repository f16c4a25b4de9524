"""`RewriteResult`: what the rewrite search measured and chose, as a frozen, JSON-ready record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..atomic import atomic_write_json
from ..atomic import json_safe
from .policies import Candidate

__all__ = ["RewriteResult"]


@dataclass(frozen=True)
class RewriteResult:
    """The outcome of `search_rewrite`.

    Attributes:
        policy: the policy's description (``name``, class, LMS power).
        classes: the two classes, the column order of the probabilities.
        base: the base model (``feature_factor = lr = 0``), scored by the policy.
        candidates: every measured candidate, in the order measured (``metrics.stage`` is ``grid`` or ``refine``).
        best: the chosen candidate, or ``None`` when none passed the guards (and beat the base's score).
            ``peft_model.merge_and_unload(**result.merge_kwargs())`` writes it into the weights.
        lms_floor (`float` or `None`): the LMS guard, relative to the base model's LMS (``None``: off; see
            `gradiend_peft.evaluation.policies`).
        control_floor (`float` or `None`): the control guard, relative to the base model's control accuracy
            (``None``: off; see `gradiend_peft.evaluation.policies`).
        row_classes (`tuple[str | None, ...]`, *optional*, defaults to ``()``): each evaluation row's class.
        base_row_probs (`tuple[tuple[float, ...], ...]`, *optional*, defaults to ``()``): each evaluation row's
            ``P(class)`` per class, before the rewrite (the base model).
        best_row_probs (`tuple[tuple[float, ...], ...]`, *optional*, defaults to ``None``): each evaluation row's
            ``P(class)`` per class, after the chosen rewrite (``None``: no candidate was chosen).
        transitions: per feature factor, ``acts_from`` (the first rate at which the edit acts) and ``fails_from``
            (the first rate above a feasible one that fails a guard), ``None`` where not seen.
        settings: how the search ran (objective, apply mode, sizes, seconds).
    """

    policy: dict[str, Any]
    classes: tuple[str, ...]
    base: Candidate
    candidates: tuple[Candidate, ...]
    best: Optional[Candidate]
    lms_floor: Optional[float]
    control_floor: Optional[float]
    row_classes: tuple[Optional[str], ...] = ()
    base_row_probs: tuple[tuple[float, ...], ...] = ()
    best_row_probs: Optional[tuple[tuple[float, ...], ...]] = None
    transitions: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def merge_kwargs(self) -> dict[str, float]:
        """``{"feature_factor": ..., "lr": ...}`` of the chosen candidate, for ``merge_and_unload(**kwargs)``."""
        if self.best is None:
            raise ValueError("The search chose no candidate (none passed the guards and improved on the base model).")
        return {"feature_factor": self.best.feature_factor, "lr": self.best.lr}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        return json_safe({
            "policy": self.policy, "classes": list(self.classes), "base": self.base.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "best": None if self.best is None else self.best.to_dict(), "lms_floor": self.lms_floor,
            "control_floor": self.control_floor, "row_classes": list(self.row_classes),
            "base_row_probs": [list(p) for p in self.base_row_probs],
            "best_row_probs": None if self.best_row_probs is None else [list(p) for p in self.best_row_probs],
            "transitions": self.transitions, "settings": self.settings,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RewriteResult":
        """The inverse of `to_dict`."""
        best_probs = data.get("best_row_probs")
        return cls(
            policy=dict(data["policy"]), classes=tuple(data["classes"]), base=Candidate.from_dict(data["base"]),
            candidates=tuple(Candidate.from_dict(c) for c in data["candidates"]),
            best=None if data.get("best") is None else Candidate.from_dict(data["best"]),
            lms_floor=data.get("lms_floor"), control_floor=data.get("control_floor"),
            row_classes=tuple(data.get("row_classes") or ()),
            base_row_probs=tuple(tuple(p) for p in data.get("base_row_probs") or ()),
            best_row_probs=None if best_probs is None else tuple(tuple(p) for p in best_probs),
            transitions=dict(data.get("transitions") or {}), settings=dict(data.get("settings") or {}),
        )

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically; returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def to_table(self) -> list[dict[str, Any]]:
        """One flat dict per candidate (the base first): feature factor, lr, stage, score, feasible, LMS, control
        accuracy, BPI, mean gap and ``P(C)`` per class."""
        table = []
        for c in (self.base, *self.candidates):
            m = c.metrics
            row = {"feature_factor": m.feature_factor, "lr": m.lr, "stage": m.stage, "score": c.score,
                   "feasible": c.feasible, "lms": m.lms, "control_accuracy": m.control_accuracy,
                   "control_margin": m.control_margin, "bpi": m.bpi,
                   "mean_abs_gap": m.mean_abs_gap, "mean_abs_shift": m.mean_abs_shift}
            row.update({f"P({k})": v for k, v in m.class_probs.items()})
            table.append(row)
        return table

    def grid(self, metric: str = "score") -> tuple[list[float], list[float], list[list[float]]]:
        """``(feature_factors, lrs, values)`` with ``values[i][j]`` the metric (``score``, or any field of
        `CandidateMetrics` holding a number) of ``(feature_factors[i], lrs[j])``, NaN where not measured."""
        def value(c: Candidate) -> float:
            v = c.score if metric == "score" else getattr(c.metrics, metric)
            return math.nan if v is None else float(v)

        ffs = sorted({c.feature_factor for c in self.candidates})
        lrs = sorted({c.lr for c in self.candidates})
        table = [[math.nan] * len(lrs) for _ in ffs]
        for c in self.candidates:
            table[ffs.index(c.feature_factor)][lrs.index(c.lr)] = value(c)
        return ffs, lrs, table

    def summary(self) -> str:
        """A plain-text summary: the base, the chosen candidate and the guards."""
        def line(tag: str, c: Candidate) -> str:
            m = c.metrics
            probs = "  ".join(f"P({k})={v:.4f}" for k, v in m.class_probs.items())
            control = "" if m.control_accuracy is None else (f"  control accuracy={m.control_accuracy:.3f} "
                                                             f"margin={m.control_margin:.3f}")
            return (f"{tag:<6} ff={m.feature_factor:+.3g} lr={m.lr:.4g}  score={c.score:.4f}  LMS={m.lms:.4f}"
                    f"{control}  gap={m.mean_abs_gap:.4f}  {probs}")

        lines = [f"rewrite search ({self.policy.get('name')}): {len(self.candidates)} candidates", line("base", self.base)]
        lines.append(line("best", self.best) if self.best else "best   none (no candidate passed the guards and improved)")
        return "\n".join(lines)
