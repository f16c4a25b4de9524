"""Paired statistics against hand computations (small cases done on paper, in the comments), brute-force enumeration,
and scipy where it is installed."""

import itertools
import math
import statistics

import pytest
import torch

from gradiend_peft.evaluation.paired_statistics import (
    binomial_two_sided_p,
    mcnemar_exact,
    paired_bootstrap_interval,
    wilcoxon_signed_rank,
)

try:  # the dev extra installs scipy; the cross-checks run wherever it is importable
    from scipy import stats as scipy_stats
except ImportError:  # pragma: no cover - depends on the environment
    scipy_stats = None
needs_scipy = pytest.mark.skipif(scipy_stats is None, reason="pip install scipy (the dev extra has it)")


# ------------------------------------------------------------------------------------------------ McNemar
def test_binomial_two_sided_p_by_hand():
    assert binomial_two_sided_p(0, 0) == 1.0
    assert binomial_two_sided_p(0, 5) == 2 / 32  # 2 * C(5,0) / 2^5
    assert binomial_two_sided_p(5, 5) == 2 / 32
    assert binomial_two_sided_p(1, 2) == 1.0  # 2 * (1 + 2) / 4 > 1
    assert binomial_two_sided_p(2, 10) == 2 * (1 + 10 + 45) / 1024
    # DESIGN.md: a net 10 flips out of 20 (15 one way, 5 the other) is just significant
    assert binomial_two_sided_p(5, 20) == pytest.approx(2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20, rel=1e-15)
    assert binomial_two_sided_p(5, 20) < 0.05 < binomial_two_sided_p(6, 20)
    with pytest.raises(ValueError):
        binomial_two_sided_p(3, 2)


def test_mcnemar_counts_only_the_items_that_change():
    before = [True, True, True, False, False, True, False, True]
    after = [True, False, False, False, True, True, False, False]
    result = mcnemar_exact(before, after)
    # items 1, 2, 7 go yes -> no; item 4 goes no -> yes; the other four stay
    assert (result.yes_to_no, result.no_to_yes, result.n) == (3, 1, 8)
    assert result.p_value == 2 * (1 + 4) / 16  # X ~ Bin(4, 1/2): 2 P(X <= 1)
    unchanged = mcnemar_exact([True, False], [True, False])
    assert (unchanged.yes_to_no, unchanged.no_to_yes, unchanged.p_value) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="one before and one after"):
        mcnemar_exact([True], [True, False])


@needs_scipy
@pytest.mark.parametrize("b,c", [(0, 1), (3, 1), (7, 19), (120, 95), (400, 460)])
def test_mcnemar_equals_scipys_binomial_test(b, c):
    before = [True] * b + [False] * c + [True] * 5
    after = [False] * b + [True] * c + [True] * 5
    expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(before, after).p_value == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------ Wilcoxon
def test_wilcoxon_exact_by_hand():
    # three positive differences: W+ = 1 + 2 + 3 = 6, reached by one of the 2^3 sign patterns -> p = 2/8
    result = wilcoxon_signed_rank([0.5, 1.0, 3.0])
    assert (result.statistic, result.method, result.n, result.n_zero) == (6.0, "exact", 3, 0)
    assert result.p_value == 0.25
    # ranks 1..5, the smallest negative: W+ = 14 of 15; subsets of {1..5} summing to >= 14: {2,3,4,5}, {1..5}
    result = wilcoxon_signed_rank([-1.0, 2.0, 3.0, 4.0, 5.0])
    assert result.statistic == 14.0 and result.p_value == 2 * 2 / 32
    # zeros are dropped (Wilcoxon's rule) and counted; the median keeps them
    result = wilcoxon_signed_rank([0.0, 0.0, 1.0, 2.0, 3.0])
    assert (result.n, result.n_zero, result.p_value, result.median) == (3, 2, 0.25, 1.0)
    everything_zero = wilcoxon_signed_rank([0.0, 0.0])
    assert (everything_zero.p_value, everything_zero.n, everything_zero.statistic) == (1.0, 0, 0.0)


def test_wilcoxon_exact_with_ties_uses_mid_ranks():
    # |d| = 1, 1, 2, 3 -> ranks 1.5, 1.5, 3, 4; W+ = 1.5 + 1.5 + 4 = 7. Doubled ranks {3, 3, 6, 8}: of the 16 sign
    # patterns, those with a doubled sum >= 14 are {6,8}, {3,3,8}, {3,6,8} (twice) and {3,3,6,8}: 5 -> p = 10/16
    result = wilcoxon_signed_rank([1.0, 1.0, -2.0, 3.0])
    assert result.statistic == 7.0 and result.method == "exact"
    assert result.p_value == 10 / 16
    assert result.median == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_wilcoxon_exact_equals_brute_force_enumeration(seed):
    """Every sign pattern of the ranks, enumerated: the exact p-value is the share of patterns at least as extreme."""
    generator = torch.Generator().manual_seed(seed)
    d = (torch.randint(-4, 5, (11,), generator=generator).double() / 2).tolist()  # ties and zeros on purpose
    result = wilcoxon_signed_rank(d)
    kept = [v for v in d if v != 0]
    magnitudes = sorted(abs(v) for v in kept)
    rank = {m: statistics.mean(i + 1 for i, x in enumerate(magnitudes) if x == m) for m in magnitudes}
    ranks = [rank[abs(v)] for v in kept]
    observed = sum(r for r, v in zip(ranks, kept) if v > 0)
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(ranks))]
    lower = sum(s <= observed + 1e-9 for s in sums) / len(sums)
    upper = sum(s >= observed - 1e-9 for s in sums) / len(sums)
    assert result.statistic == pytest.approx(observed)
    assert result.n == len(kept) and result.n_zero == len(d) - len(kept)
    assert result.p_value == pytest.approx(min(1.0, 2 * min(lower, upper)), rel=1e-12)


def test_wilcoxon_normal_approximation_by_hand():
    # d_i = (-1)^i i for i = 1..60: W+ = 2 + 4 + ... + 60 = 930, E = 60*61/4 = 915, Var = 60*61*121/24 = 18452.5
    d = [(-1) ** i * i for i in range(1, 61)]
    result = wilcoxon_signed_rank(d)
    assert (result.method, result.n, result.statistic) == ("normal", 60, 930.0)
    z = (930 - 915) / math.sqrt(18452.5)
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    # ties: 30 items of +1 and 30 of -2 -> mid-ranks 15.5 (the 1s) and 45.5 (the 2s); W+ = 30 * 15.5 = 465;
    # Var = 18452.5 - 2 (30^3 - 30) / 48
    tied = wilcoxon_signed_rank([1.0] * 30 + [-2.0] * 30)
    variance = 18452.5 - 2 * (30**3 - 30) / 48
    assert tied.statistic == 465.0
    assert tied.p_value == pytest.approx(math.erfc(abs(465 - 915) / math.sqrt(variance) / math.sqrt(2)), rel=1e-12)
    # the exact count agrees with the approximation where both are good (n = 50, no ties)
    d50 = [(-1) ** (i % 3 == 0) * i for i in range(1, 51)]
    exact, normal = wilcoxon_signed_rank(d50), wilcoxon_signed_rank(d50, exact_max_n=10)
    assert (exact.method, normal.method) == ("exact", "normal")
    assert exact.p_value == pytest.approx(normal.p_value, abs=0.01)


@needs_scipy
def test_wilcoxon_equals_scipy():
    generator = torch.Generator().manual_seed(3)
    small = (torch.randn(20, generator=generator) + 0.4).tolist()  # no ties: scipy's exact method applies
    ours = wilcoxon_signed_rank(small)
    theirs = scipy_stats.wilcoxon(small, method="exact")
    assert ours.method == "exact" and ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert min(ours.statistic, ours.n * (ours.n + 1) / 2 - ours.statistic) == pytest.approx(theirs.statistic)
    large = (torch.randint(-6, 9, (300,), generator=generator).double() / 4).tolist()  # ties and zeros
    ours = wilcoxon_signed_rank(large)
    theirs = scipy_stats.wilcoxon(large, zero_method="wilcox", correction=False, method="approx")
    assert ours.method == "normal" and ours.n_zero > 0
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)


def test_wilcoxon_refuses_empty_and_non_finite_input():
    with pytest.raises(ValueError, match="at least one"):
        wilcoxon_signed_rank([])
    with pytest.raises(ValueError, match="finite"):
        wilcoxon_signed_rank([1.0, float("nan")])


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_of_a_constant_change_is_that_change():
    result = paired_bootstrap_interval([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], n_resamples=500)
    assert (result.delta, result.low, result.high) == (0.5, 0.5, 0.5)
    assert (result.n, result.n_resamples, result.confidence, result.seed) == (3, 500, 0.95, 0)


def test_bootstrap_of_two_items_by_hand():
    # changes 0 and 1: a resample of two items has mean 0 (prob 1/4), 0.5 (1/2) or 1 (1/4); the 2.5% quantile is
    # therefore 0 and the 97.5% quantile 1, far from any sampling noise at 10,000 resamples
    result = paired_bootstrap_interval([0.0, 0.0], [0.0, 1.0])
    assert (result.delta, result.low, result.high) == (0.5, 0.0, 1.0)


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    """n = 4 items: all 4^4 resamples enumerated give the exact bootstrap distribution of the mean change; its 10% and
    90% quantiles sit inside steps of that distribution, so 10,000 seeded resamples must land on them exactly."""
    before, after = [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 3.0, 10.0]
    means = sorted(sum(after[i] - before[i] for i in pick) / 4 for pick in itertools.product(range(4), repeat=4))
    result = paired_bootstrap_interval(before, after, confidence=0.8, seed=7)
    for q, got in ((0.1, result.low), (0.9, result.high)):
        value = means[math.floor(q * len(means))]
        below = sum(m < value for m in means) / len(means)
        upto = sum(m <= value for m in means) / len(means)
        se = math.sqrt(q * (1 - q) / 10_000)
        assert below + 5 * se < q < upto - 5 * se  # well inside the step: Monte Carlo noise cannot move it
        assert got == value
    assert (result.low, result.delta, result.high) == (1.0, 3.5, 6.0)
    # 95% on three items: a resample of the smallest (largest) change three times has probability 1/27 > 2.5%,
    # so the interval runs from the smallest to the largest change
    three = paired_bootstrap_interval([0.0] * 3, [0.0, 1.0, 3.0])
    assert (three.low, three.high) == (0.0, 3.0)


def test_bootstrap_is_seeded_and_the_interval_covers_the_change():
    generator = torch.Generator().manual_seed(0)
    before = torch.randn(255, generator=generator).tolist()
    after = [b + 0.1 + 0.5 * x for b, x in zip(before, torch.randn(255, generator=generator).tolist())]
    first, again = paired_bootstrap_interval(before, after, seed=1), paired_bootstrap_interval(before, after, seed=1)
    other = paired_bootstrap_interval(before, after, seed=2)
    assert first == again and (other.low, other.high) != (first.low, first.high)
    assert first.low < first.delta < first.high
    # the width is about 2 * 1.96 * sd(d) / sqrt(n) for a mean
    d = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    expected = 2 * 1.96 * float(d.std()) / math.sqrt(255)
    assert first.high - first.low == pytest.approx(expected, rel=0.1)


@needs_scipy
def test_bootstrap_agrees_with_scipys_paired_percentile_bootstrap():
    generator = torch.Generator().manual_seed(5)
    before = (torch.rand(200, generator=generator) < 0.6).double().mul(100).tolist()
    after = [b if u > 0.1 else 100 - b for b, u in zip(before, torch.rand(200, generator=generator).tolist())]
    ours = paired_bootstrap_interval(before, after)
    theirs = scipy_stats.bootstrap((before, after), lambda x, y, axis=-1: (y - x).mean(axis=axis), paired=True,
                                   vectorized=True, n_resamples=10_000, confidence_level=0.95, method="percentile",
                                   random_state=1).confidence_interval
    d = torch.tensor(after) - torch.tensor(before)
    tolerance = 0.25 * float(d.std()) / math.sqrt(200)  # Monte Carlo noise of a 2.5% quantile at 10,000 resamples
    assert ours.low == pytest.approx(theirs.low, abs=tolerance)
    assert ours.high == pytest.approx(theirs.high, abs=tolerance)


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one item"):
        paired_bootstrap_interval([], [])
    with pytest.raises(ValueError, match="one before and one after"):
        paired_bootstrap_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_interval([1.0], [float("inf")])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_interval([1.0], [1.0], confidence=1.0)
