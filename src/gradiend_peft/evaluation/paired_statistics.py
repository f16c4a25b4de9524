"""Paired statistics: how sure is a change measured on the same items before and after?

Three tests of one before/after comparison over ``n`` items, each item measured under both conditions:

- `paired_bootstrap_interval`: the change of a mean, ``delta = mean(after) - mean(before)``, with a percentile
  interval from resampling *items* (each resample draws ``n`` item indices with replacement and takes the mean of
  ``after[i] - before[i]`` over them); the interval holds the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  quantiles of the resampled changes (linear interpolation between order statistics). Seeded: the same inputs and
  seed give the same interval.
- `mcnemar_exact`: for a yes/no outcome per item, the items whose outcome changes (``b`` from yes to no, ``c`` from
  no to yes) decide; under no change both directions are equally likely, so ``b ~ Binomial(b + c, 1/2)`` and the
  two-sided p-value is ``min(1, 2 P(X <= min(b, c)))``. Items whose outcome stays the same carry no information
  about the change. Exact (integer arithmetic), for any ``b + c``.
- `wilcoxon_signed_rank`: for the per-item differences ``d_i = after_i - before_i``, zeros are dropped (Wilcoxon's
  rule), the ``|d_i|`` are ranked with mid-ranks for ties, and ``W+`` is the sum of the ranks of the positive
  differences. Exact while at most ``exact_max_n`` differences are left: the null distribution of ``W+`` is that
  of every sign pattern equally likely, counted exactly (mid-ranks included: the conditional distribution given
  the ranks); two-sided ``p = min(1, 2 min(P(W+ <= w), P(W+ >= w)))``. Above that, the normal approximation with
  the tie correction and no continuity correction: ``E = m(m+1)/4``, ``Var = m(m+1)(2m+1)/24 - sum(t^3 - t)/48``
  over the groups of ``t`` tied magnitudes, ``z = (W+ - E) / sqrt(Var)``, ``p = erfc(|z| / sqrt 2)``. The result
  says which was used.

All three take plain sequences of numbers (or booleans) and need nothing beyond torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

__all__ = [
    "BootstrapInterval",
    "McNemarResult",
    "WilcoxonResult",
    "binomial_two_sided_p",
    "mcnemar_exact",
    "paired_bootstrap_interval",
    "wilcoxon_signed_rank",
]

EXACT_MAX_N = 50
"""`wilcoxon_signed_rank` counts the null distribution exactly up to this many non-zero differences."""
_RESAMPLES_PER_CHUNK = 1000


def _paired(before: Sequence[float], after: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(before, dtype=torch.float64).flatten()
    b = torch.as_tensor(after, dtype=torch.float64).flatten()
    if a.numel() != b.numel():
        raise ValueError(f"paired values need one before and one after per item, got {a.numel()} and {b.numel()}.")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("paired values must be finite (a NaN or inf item has no change to measure).")
    return a, b


# ------------------------------------------------------------------------------------------------ bootstrap
@dataclass(frozen=True)
class BootstrapInterval:
    """A paired bootstrap interval of the change of a mean.

    Attributes:
        delta: ``mean(after) - mean(before)`` on the items as given.
        low: the lower end of the interval.
        high: the upper end.
        confidence: the interval's nominal coverage (0.95: the 2.5% and 97.5% quantiles).
        n_resamples: how many resamples of the items were drawn.
        seed: the seed of the draw.
        n: the number of items.
    """

    delta: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int
    n: int


def paired_bootstrap_interval(
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """The change of the mean from ``before`` to ``after`` over the same items, with a paired percentile bootstrap
    interval (see the module docstring).

    Args:
        before: per item, the value under the first condition (e.g. 100 where a model preferred the first sentence, else 0).
        after: per item, the value under the second condition, in the same item order.
        n_resamples: how many resamples of the items to draw.
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the draw (a `torch.Generator`).

    Returns:
        `BootstrapInterval`.

    Raises:
        ValueError: for no items, different lengths, non-finite values, ``n_resamples < 1`` or a confidence
            outside (0, 1).
    """
    a, b = _paired(before, after)
    if a.numel() == 0:
        raise ValueError("a paired bootstrap needs at least one item.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    differences = b - a
    n = differences.numel()
    generator = torch.Generator().manual_seed(int(seed))
    means = []
    for start in range(0, n_resamples, _RESAMPLES_PER_CHUNK):
        size = min(_RESAMPLES_PER_CHUNK, n_resamples - start)
        index = torch.randint(n, (size, n), generator=generator)
        means.append(differences[index].mean(dim=1))
    resampled = torch.cat(means)
    tail = (1.0 - confidence) / 2.0
    low, high = torch.quantile(resampled, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return BootstrapInterval(delta=float(differences.mean()), low=low, high=high, confidence=confidence,
                             n_resamples=n_resamples, seed=int(seed), n=n)


# ------------------------------------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemarResult:
    """The exact McNemar test of a yes/no outcome measured twice on the same items.

    Attributes:
        yes_to_no: items whose outcome was yes before and no after (``b``).
        no_to_yes: items whose outcome was no before and yes after (``c``).
        p_value: the two-sided exact p-value, ``min(1, 2 P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``;
            1.0 when no item changes.
        n: the number of items.
    """

    yes_to_no: int
    no_to_yes: int
    p_value: float
    n: int


def binomial_two_sided_p(k: int, n: int) -> float:
    """The two-sided exact p-value of ``k`` successes in ``n`` fair trials: ``min(1, 2 P(X <= min(k, n - k)))``
    with ``X ~ Binomial(n, 1/2)`` (exact integer arithmetic; 1.0 for ``n = 0``)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> McNemarResult:
    """The exact McNemar test (see the module docstring) of per-item yes/no outcomes measured before and after.

    Args:
        before: per item, the outcome under the first condition (e.g. "the model preferred the first sentence").
        after: per item, the outcome under the second condition, in the same item order.

    Returns:
        `McNemarResult`.

    Raises:
        ValueError: when the two sequences differ in length.
    """
    before, after = [bool(x) for x in before], [bool(x) for x in after]
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need one before and one after per item, got {len(before)} and {len(after)}.")
    yes_to_no = sum(x and not y for x, y in zip(before, after))
    no_to_yes = sum(y and not x for x, y in zip(before, after))
    return McNemarResult(yes_to_no=yes_to_no, no_to_yes=no_to_yes,
                         p_value=binomial_two_sided_p(yes_to_no, yes_to_no + no_to_yes), n=len(before))


# ------------------------------------------------------------------------------------------------ Wilcoxon
@dataclass(frozen=True)
class WilcoxonResult:
    """The Wilcoxon signed-rank test of per-item differences ``after - before``.

    Attributes:
        statistic: ``W+``, the sum of the (mid-)ranks of the positive differences among the non-zero ones.
        p_value: the two-sided p-value.
        method: ``"exact"`` (the null distribution counted) or ``"normal"`` (the tie-corrected normal
            approximation, no continuity correction).
        n: the number of non-zero differences (the ones ranked).
        n_zero: the number of zero differences (dropped).
        median: the median of all differences, zeros included (the mean of the two middle ones for even counts).
    """

    statistic: float
    p_value: float
    method: str
    n: int
    n_zero: int
    median: float


def _mid_ranks(values: list[float]) -> list[float]:
    """1-based ranks of ``values`` (ascending); tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def _exact_signed_rank_p(doubled_ranks: list[int], doubled_statistic: int) -> float:
    """Two-sided p of ``W+`` when every sign pattern of the ranks is equally likely; ranks and statistic are doubled
    so that mid-ranks are integers. Counts the patterns by their rank sum (integers, exact)."""
    counts = [1] + [0] * sum(doubled_ranks)
    reach = 0
    for rank in doubled_ranks:
        reach += rank
        for total in range(reach, rank - 1, -1):
            counts[total] += counts[total - rank]
    patterns = 2 ** len(doubled_ranks)
    lower = sum(counts[: doubled_statistic + 1])
    upper = sum(counts[doubled_statistic:])
    return float(min(Fraction(1), Fraction(2 * min(lower, upper), patterns)))


def wilcoxon_signed_rank(differences: Sequence[float], *, exact_max_n: int = EXACT_MAX_N) -> WilcoxonResult:
    """The Wilcoxon signed-rank test of paired differences (see the module docstring for zeros, ties and the two
    methods).

    Args:
        differences: per item, ``after - before``.
        exact_max_n: count the null distribution exactly up to this many non-zero differences; above, use the
            normal approximation.

    Returns:
        `WilcoxonResult` (p-value 1.0 and method ``"exact"`` when every difference is zero).

    Raises:
        ValueError: for no differences or a non-finite one.
    """
    values = torch.as_tensor(differences, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("the Wilcoxon signed-rank test needs at least one difference.")
    if not torch.isfinite(values).all():
        raise ValueError("the differences must be finite.")
    median = float(values.quantile(0.5))
    nonzero = [float(v) for v in values.tolist() if v != 0.0]
    n_zero = values.numel() - len(nonzero)
    m = len(nonzero)
    if m == 0:
        return WilcoxonResult(statistic=0.0, p_value=1.0, method="exact", n=0, n_zero=n_zero, median=median)
    ranks = _mid_ranks([abs(v) for v in nonzero])
    statistic = sum(r for r, v in zip(ranks, nonzero) if v > 0)
    if m <= exact_max_n:
        p_value = _exact_signed_rank_p([round(2 * r) for r in ranks], round(2 * statistic))
        return WilcoxonResult(statistic=statistic, p_value=p_value, method="exact", n=m, n_zero=n_zero,
                              median=median)
    ties: dict[float, int] = {}
    for r in ranks:
        ties[r] = ties.get(r, 0) + 1
    variance = m * (m + 1) * (2 * m + 1) / 24.0 - sum(t**3 - t for t in ties.values()) / 48.0
    z = (statistic - m * (m + 1) / 4.0) / math.sqrt(variance)
    return WilcoxonResult(statistic=statistic, p_value=math.erfc(abs(z) / math.sqrt(2.0)), method="normal", n=m,
                          n_zero=n_zero, median=median)
