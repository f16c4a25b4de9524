"""The rewrite that brings rows' preference between two fillers closest to none, guarded by the LMS.

Where a feature's rows come with free words in their slot (each row its own ``factual`` / ``alternative``, e.g. an
attribute in a context of one class against the attribute of the other class), the measure of a rewrite is the mean
over rows of their log-odds (`gradiend_peft.evaluation.scoring.filled_row_log_odds`):

    m(rewrite) = mean_i [log P(text_i with factual_i) - log P(text_i with alternative_i)]

With rows of both classes in the same frames (each row beside its class-swapped copy), the frame's own preference for
a word cancels in the mean and ``m`` measures the interaction of class and filler: how much the model prefers the
filler associated with the row's class. A rewrite that removes that association brings ``m`` to 0; one that
overshoots makes it negative. `search_neutral_rewrite` measures ``m`` and the LMS on neutral text for each candidate
learning rate (at one feature factor, ``0`` by default: the decoder bias), keeps the candidates whose LMS is at least
``lms_floor`` x the base's and, given control rows (rows whose context decides the class, with the classes' words in
the slot), whose control accuracy is at least ``control_floor`` x the base's and control margin (mean log-odds of the
right class's words against the other's) at least ``margin_floor`` x the base's, and chooses the one with the smallest
``|m|``, if it is smaller than the base's. The controls keep an edit that removes the association from also removing
the class itself.

Choose on rows kept apart from those you report (the data modules deal search and report splits), and report the
chosen rewrite on the held-out rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_json
from ..tuner.constants import infer_objective
from ..tuner.model import tuner_of
from .scoring import language_modeling_score, prepare_lms
from .scoring.filled_rows import filled_row_log_odds

__all__ = ["NeutralCandidate", "NeutralSearchResult", "search_neutral_rewrite", "select_neutral"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeutralCandidate:
    """One measured rewrite: its values, the mean log-odds ``m`` over the rows, the share of rows with positive
    log-odds (the factual filler preferred) and the LMS."""

    feature_factor: float
    lr: float
    mean_log_odds: float
    factual_preferred: float
    lms: float
    control_accuracy: Optional[float] = None
    control_margin: Optional[float] = None


@dataclass
class NeutralSearchResult:
    """What `search_neutral_rewrite` measured: the base model, every candidate, the choice (``None`` when no
    candidate passes the LMS guard with a smaller ``|m|`` than the base)."""

    adapter_name: str
    rows: int
    lms_floor: float
    base: NeutralCandidate
    candidates: list[NeutralCandidate] = field(default_factory=list)
    best: Optional[NeutralCandidate] = None
    control_floor: float = 1.0
    margin_floor: float = 0.9

    def merge_kwargs(self) -> dict[str, float]:
        """``{"feature_factor": ..., "lr": ...}`` of the choice, for ``merge_and_unload`` or ``steer``.

        Raises:
            `ValueError`: when nothing was chosen.
        """
        if self.best is None:
            raise ValueError("No candidate passed the LMS guard with a smaller |mean log-odds| than the base model; "
                             "there is nothing to merge. Widen the learning rates or lower lms_floor.")
        return {"feature_factor": self.best.feature_factor, "lr": self.best.lr}

    def summary(self) -> str:
        """One line per candidate (the base first), the choice marked."""
        controls = self.base.control_margin is not None
        guards = f"LMS >= {self.lms_floor:g} x base" + (
            f", control accuracy >= {self.control_floor:g} x base, control margin >= {self.margin_floor:g} x base"
            if controls else "")
        lines = [f"{'model':<10} {'ff':>4} {'lr':>8} {'mean log-odds':>14} {'factual pref':>13} {'LMS':>7}"
                 + (f" {'control acc':>11} {'margin':>7}" if controls else "") + f"  ({guards}; {self.rows} rows)"]
        for name, c in [("base", self.base)] + [("", c) for c in self.candidates]:
            mark = "chosen" if c is self.best else ("base" if name else "")
            ff, lr = ("-", "-") if name else (f"{c.feature_factor:+g}", f"{c.lr:.3g}")
            lines.append(f"{mark:<10} {ff:>4} {lr:>8} {c.mean_log_odds:>+14.4f} {c.factual_preferred:>13.3f} "
                         f"{c.lms:>7.4f}" + (f" {c.control_accuracy:>11.3f} {c.control_margin:>7.3f}" if controls else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter_name": self.adapter_name, "rows": self.rows, "lms_floor": self.lms_floor,
                "control_floor": self.control_floor, "margin_floor": self.margin_floor,
                "base": asdict(self.base), "candidates": [asdict(c) for c in self.candidates],
                "best": None if self.best is None else asdict(self.best)}

    def save_json(self, path: str) -> str:
        """Writes the result as JSON (atomically); returns the path."""
        atomic_write_json(path, self.to_dict())
        return path


def select_neutral(candidates: Sequence[NeutralCandidate], base: NeutralCandidate, lms_floor: float,
                   control_floor: float = 1.0, margin_floor: float = 0.9) -> Optional[NeutralCandidate]:
    """The candidate with the smallest ``|mean_log_odds|`` among those with ``lms >= lms_floor * base.lms`` (and,
    where the base has control scores, ``control_accuracy >= control_floor * base.control_accuracy`` and
    ``control_margin >= margin_floor * base.control_margin``), if that is smaller than the base's (ties: the earlier
    candidate); else ``None``."""

    def guarded(c: NeutralCandidate) -> bool:
        if base.control_margin is None:
            return True
        return (c.control_accuracy >= control_floor * base.control_accuracy
                and c.control_margin >= margin_floor * base.control_margin)

    eligible = [c for c in candidates
                if math.isfinite(c.mean_log_odds) and c.lms >= lms_floor * base.lms and guarded(c)]
    if not eligible:
        return None
    best = min(eligible, key=lambda c: abs(c.mean_log_odds))
    return best if abs(best.mean_log_odds) < abs(base.mean_log_odds) else None


def search_neutral_rewrite(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    neutral: Sequence[str],
    lrs: Sequence[float],
    *,
    feature_factor: float = 0.0,
    adapter_name: Optional[str] = None,
    lms_floor: float = 0.99,
    control: Optional[Sequence[Mapping[str, Any]]] = None,
    classes: Optional[Mapping[str, Sequence[str]]] = None,
    control_floor: float = 1.0,
    margin_floor: float = 0.9,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> NeutralSearchResult:
    """Measures each ``(feature_factor, lr)`` rewrite of the adapter on ``rows`` and ``neutral`` text (steered, the
    weights untouched) and chooses as the module docstring says.

    Args:
        model (`peft.PeftModel`): a model with the GRADIEND adapter, unmerged and unsteered (another adapter may be
            merged into the base weights: the candidates act on top of it).
        tokenizer: its tokenizer.
        rows: rows with ``text`` (one ``[MASK]``), ``factual`` and ``alternative``; rows of both classes.
        neutral: neutral texts for the LMS guard.
        lrs: the learning rates to try.
        feature_factor (`float`): the latent value decoded (default ``0``: the decoder bias).
        adapter_name (`str`, *optional*): the adapter (default: the active one).
        lms_floor (`float`): a candidate's LMS must be at least this times the base's.
        control (*optional*): rows whose context decides the class (a ``factual_class`` of ``classes``, the slot
            scored over the classes' words, as `measure_rewrites`' control rows); without them only the LMS guards.
        classes (`Mapping[str, Sequence[str]]`, *optional*): the two classes and their words, for ``control``
            (default: read from the control rows).
        control_floor (`float`): a candidate's control accuracy must be at least this times the base's.
        margin_floor (`float`): a candidate's control margin must be at least this times the base's.
        batch_size: sentences per forward pass.
        progress (`bool`, *optional*): show a progress bar over the candidates.

    Returns:
        `NeutralSearchResult`.

    Raises:
        `ValueError`: for no learning rate, no neutral text, a non-finite learning rate or malformed rows.
    """
    lrs = [float(lr) for lr in lrs]
    if not lrs or not all(math.isfinite(lr) for lr in lrs):
        raise ValueError(f"lrs must be a non-empty list of finite learning rates, got {lrs!r}.")
    if not neutral:
        raise ValueError("search_neutral_rewrite needs neutral texts for the LMS guard.")
    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    objective = infer_objective(model)
    lms_inputs = prepare_lms(list(neutral), tokenizer, objective, batch_size=batch_size)
    guard = None
    if control is not None:  # the control rows as the measured rows: their slot probabilities give the scores
        from .measure import RewriteInputs, control_scores

        guard = RewriteInputs(model, control, neutral[:1], tokenizer=tokenizer, classes=classes, adapter_name=name,
                              batch_size=batch_size)

    def measure(ff: float, lr: float) -> NeutralCandidate:
        accuracy = margin = None
        if guard is not None:  # steers (and stops steering) by itself
            probs, _, _ = guard.measure(ff, lr)
            accuracy, margin = control_scores(probs, guard.slots.row_classes, guard.classes)
        with tuner.steer(ff, lr, [name], cache=True) if lr else contextlib.nullcontext():
            odds = filled_row_log_odds(model, tokenizer, rows, objective, batch_size=batch_size, progress=False)
            lms = language_modeling_score(model, lms_inputs).lms
        return NeutralCandidate(feature_factor=ff, lr=lr, mean_log_odds=float(odds.mean()),
                                factual_preferred=float((odds > 0).double().mean()), lms=lms,
                                control_accuracy=accuracy, control_margin=margin)

    base = measure(0.0, 0.0)
    candidates = []
    for lr in tqdm(lrs, desc="neutral search", unit="candidate", disable=None if progress is None else not progress):
        candidates.append(measure(feature_factor, lr))
    best = select_neutral(candidates, base, lms_floor, control_floor, margin_floor)
    logger.info("Neutral search of adapter %r on %d rows: base mean log-odds %+.4f; chosen %s", name, len(rows),
                base.mean_log_odds, "none" if best is None else f"lr {best.lr:g} ({best.mean_log_odds:+.4f})")
    return NeutralSearchResult(adapter_name=name, rows=len(rows), lms_floor=lms_floor, base=base,
                               candidates=candidates, best=best, control_floor=control_floor, margin_floor=margin_floor)
