"""Paired changes between two bias-benchmark reports scored on the same items: for each benchmark score, the change
with a paired bootstrap interval, an exact McNemar test on the items whose choice flips, and a Wilcoxon signed-rank
test on each item's change of margin (`gradiend_peft.evaluation.paired_statistics` holds the maths).

A benchmark score is the mean of a per-item value (`gradiend_peft.bias.benchmarks.scores`): SS and the CrowS /
Wino score are 100 where the stereotype is chosen, else 0; LMS is 50 per meaningful option above the unrelated one.
The bootstrap interval is that of the change of the mean (10,000 resamples over items by default, seeded). McNemar
counts the items whose choice of the stereotype flips (to the anti-stereotype, or to the stereotype) and applies to
SS and the preference scores; Wilcoxon takes each item's margin (stereotype score minus anti-stereotype score: under
a causal LM the mean token log-probability for StereoSet and CrowS-Pairs (all pairs), the total log-probability for
the CrowS-Pairs subset and Wino) after minus before. LMS gets the interval only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...evaluation.paired_statistics import (
    BootstrapInterval,
    McNemarResult,
    WilcoxonResult,
    mcnemar_exact,
    paired_bootstrap_interval,
    wilcoxon_signed_rank,
)
from .scores import ItemScores, lms_item_values, preference_item_values, ss_item_values

__all__ = ["PAIRED_PARTS", "PairedChange", "paired_changes"]

PAIRED_PARTS = ("stereoset_intrasentence", "stereoset_intersentence", "crows_pairs", "crows_pairs_subset", "wino")
"""The report parts compared item by item (the pooled StereoSet row is their union, not compared again)."""


@dataclass(frozen=True)
class PairedChange:
    """The change of one benchmark score from one report to another on the same items.

    Attributes:
        part: the report part (``stereoset_intrasentence``, ``crows_pairs``...).
        metric: ``SS``, ``LMS`` or ``score`` (CrowS-Pairs, Wino: % stereotypical preferred).
        n: the number of items.
        before: the score of the first report.
        after: the score of the second.
        interval: the change ``after - before`` with its paired bootstrap interval.
        mcnemar: the exact McNemar test of the choice (``yes_to_no``: stereotype to anti-stereotype); ``None`` for LMS.
        wilcoxon: the signed-rank test of the per-item change of margin; ``None`` for LMS.
    """

    part: str
    metric: str
    n: int
    before: float
    after: float
    interval: BootstrapInterval
    mcnemar: Optional[McNemarResult] = None
    wilcoxon: Optional[WilcoxonResult] = None

    @property
    def delta(self) -> float:
        """``after - before``."""
        return self.interval.delta


def _check_same_items(part: str, first: ItemScores, second: ItemScores) -> None:
    if first.ids != second.ids:
        extra = f" ({len(first.ids)} and {len(second.ids)} items)" if len(first.ids) != len(second.ids) else ""
        raise ValueError(
            f"{part}: the two reports scored different items{extra}; paired statistics need the same items in the "
            "same order (the same domain, benchmarks and max_items)."
        )


def paired_changes(before: ItemScores, after: ItemScores, part: str, *, n_resamples: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> list[PairedChange]:
    """The paired changes of one part's scores: its SS and LMS (StereoSet parts) or its score (CrowS-Pairs, Wino).

    Args:
        before: the first model's per-item scores.
        after: the second model's per-item scores on the same items.
        part: the part's name (StereoSet parts hold three scores per item, the others two).
        n_resamples: bootstrap resamples over items.
        confidence: the interval's coverage.
        seed: seeds the bootstrap.

    Returns:
        `list[PairedChange]`: ``[SS, LMS]`` for a StereoSet part, ``[score]`` otherwise.

    Raises:
        ValueError: when the two reports scored different items, or none.
    """
    _check_same_items(part, before, after)
    if not before.ids:
        raise ValueError(f"{part}: no items to compare.")
    options = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    columns = [list(zip(*items.scores)) for items in (before, after)]
    stereoset = part.startswith("stereoset")
    chosen = [ss_item_values(c[0], c[1]) if stereoset else preference_item_values(c[0], c[1]) for c in columns]
    interval = paired_bootstrap_interval(chosen[0], chosen[1], **options)
    margins = [b - a for a, b in zip(before.margins, after.margins)]
    changes = [PairedChange(
        part=part, metric="SS" if stereoset else "score", n=len(before.ids), before=sum(chosen[0]) / len(chosen[0]),
        after=sum(chosen[1]) / len(chosen[1]), interval=interval,
        mcnemar=mcnemar_exact(before.stereotype_chosen, after.stereotype_chosen),
        wilcoxon=wilcoxon_signed_rank(margins),
    )]
    if stereoset:
        lms = [lms_item_values(*c) for c in columns]
        changes.append(PairedChange(part=part, metric="LMS", n=len(before.ids), before=sum(lms[0]) / len(lms[0]),
                                    after=sum(lms[1]) / len(lms[1]),
                                    interval=paired_bootstrap_interval(lms[0], lms[1], **options)))
    return changes
