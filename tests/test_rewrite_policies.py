"""Selection policies on hand-made metric tables, and the refinement's learning rates by hand."""

import math

import pytest

from gradiend_peft.evaluation import (
    Balance,
    Candidate,
    CandidateMetrics,
    Debias,
    Favour,
    Strengthen,
    Weaken,
    parse_policy,
    refinement_lrs,
    score_candidates,
    select_best,
)


def metrics(ff, lr, *, f_on_m=0.1, f_on_f=0.5, m_on_m=0.5, m_on_f=0.1, lms=1.0, control=None, bpi=0.5, fpi=0.3,
            gap=0.1, margin=None):
    """Two classes F and M with 10 rows each; probs_by_class[row class][class]."""
    return CandidateMetrics(
        feature_factor=ff, lr=lr, lms=lms,
        class_probs={"F": (f_on_m + f_on_f) / 2, "M": (m_on_m + m_on_f) / 2},
        probs_by_class={"F": {"F": f_on_f, "M": m_on_f}, "M": {"F": f_on_m, "M": m_on_m}},
        row_counts={"F": 10, "M": 10}, bpi=bpi, favour={"F": fpi, "M": 0.2}, mean_abs_gap=gap,
        control_accuracy=control, control_margin=margin,
    )


def choose(policy, table, base, **guards):
    candidates = score_candidates(policy, table, base, **guards)
    base_scored = score_candidates(policy, [base], base, **guards)[0]
    return select_best(candidates, base_scored), candidates


def test_strengthen_picks_the_highest_probability_on_the_other_class_within_the_guards():
    base = metrics(0, 0, lms=0.8, control=1.0)
    table = [
        metrics(1, 0.1, f_on_m=0.2, lms=0.80, control=1.0),
        metrics(1, 0.5, f_on_m=0.4, lms=0.795, control=0.96),  # the expected choice
        metrics(1, 1.0, f_on_m=0.6, lms=0.70, control=1.0),  # LMS below 0.99 x 0.8
        metrics(1, 2.0, f_on_m=0.7, lms=0.80, control=0.9),  # a control row flipped
        metrics(-1, 0.5, f_on_m=0.05, lms=0.80, control=1.0),
        metrics(1, 0.2, f_on_m=0.1, f_on_f=0.99, lms=0.8, control=1.0),  # own rows don't count
    ]
    best, scored = choose(Strengthen("F"), table, base)
    assert (best.feature_factor, best.lr) == (1, 0.5)
    assert best.score == pytest.approx(0.4)
    assert "LMS" in scored[2].reasons[0] and "control" in scored[3].reasons[0]
    assert [c.feasible for c in scored] == [True, True, False, False, True, True]


def test_strengthen_weights_the_other_classes_by_their_row_counts():
    m = metrics(1, 1)
    m = CandidateMetrics(**{**m.__dict__, "row_counts": {"F": 3, "M": 7}})
    assert Strengthen("F").score(m) == pytest.approx(0.1)
    assert Strengthen("M").score(m) == pytest.approx(0.1)


def test_weaken_picks_the_lowest_probability_on_the_own_class():
    base = metrics(0, 0, f_on_f=0.5)
    table = [metrics(-1, 0.1, f_on_f=0.45), metrics(-1, 1.0, f_on_f=0.2), metrics(1, 1.0, f_on_f=0.7)]
    best, _ = choose(Weaken("F"), table, base)
    assert (best.feature_factor, best.lr) == (-1, 1.0)
    assert best.score == pytest.approx(0.8)


def test_balance_multiplies_bpi_by_lms_to_the_power_k():
    base = metrics(0, 0, bpi=0.30, lms=0.9)
    table = [metrics(0.0, 1.0, bpi=0.40, lms=0.90), metrics(0.5, 1.0, bpi=0.45, lms=0.70),
             metrics(0.25, 1.0, bpi=0.42, lms=0.899)]
    best, scored = choose(Balance(), table, base, lms_floor=None)
    assert [c.score for c in scored] == pytest.approx([0.36, 0.315, 0.42 * 0.899])
    assert best.feature_factor == 0.25
    best, scored = choose(Balance(lms_power=0.0), table, base, lms_floor=None)
    assert best.feature_factor == 0.5
    best, _ = choose(Balance(lms_power=0.0), table, base)  # with the LMS floor, 0.70 < 0.99 x 0.9 fails
    assert best.feature_factor == 0.25


def test_favour_is_fpi_times_lms():
    base = metrics(0, 0, fpi=0.1, lms=1.0)
    table = [metrics(1, 1, fpi=0.3, lms=0.995), metrics(1, 2, fpi=0.31, lms=0.97)]
    best, scored = choose(Favour("F"), table, base)
    assert scored[0].score == pytest.approx(0.3 * 0.995)
    assert best.lr == 1


def test_ties_go_to_the_gentlest_edit_and_no_improvement_chooses_nothing():
    base = metrics(0, 0, f_on_m=0.1)
    table = [metrics(-1, 2.0, f_on_m=0.3), metrics(1, 0.5, f_on_m=0.3), metrics(-0.5, 0.5, f_on_m=0.3)]
    best, _ = choose(Strengthen("F"), table, base)
    assert (best.feature_factor, best.lr) == (-0.5, 0.5)
    best, _ = choose(Strengthen("F"), [metrics(1, 1, f_on_m=0.1), metrics(1, 2, f_on_m=0.05)], base)
    assert best is None
    scored = score_candidates(Strengthen("F"), [metrics(1, 1, f_on_m=0.1)], base)
    assert select_best(scored, None).lr == 1  # without a base to beat, the best feasible one


def test_the_control_guard_is_off_without_control_rows_and_nan_scores_are_infeasible():
    base = metrics(0, 0)
    scored = score_candidates(Strengthen("F"), [metrics(1, 1, f_on_m=0.3, control=0.0)], base)
    assert scored[0].feasible  # the base has no control accuracy: no guard
    scored = score_candidates(Strengthen("F"), [metrics(1, 1, f_on_m=math.nan)], base)
    assert not scored[0].feasible and select_best(scored) is None


def test_candidates_round_trip_through_dicts():
    scored = score_candidates(Balance(), [metrics(0.5, 0.2, control=0.9)], metrics(0, 0, control=1.0))[0]
    assert Candidate.from_dict(scored.to_dict()) == scored


def test_policies_parse_from_strings():
    assert parse_policy("balance") == Balance()
    assert parse_policy("strengthen:F") == Strengthen("F")
    assert parse_policy("weaken:M") == Weaken("M")
    assert parse_policy("favour:F") == Favour("F") == parse_policy("fpi:F")
    assert str(Strengthen("F")) == "strengthen:F" and Balance().to_dict() == {"name": "balance", "lms_power": 1.0}
    for bad in ("strengthen", "nonsense:F", "balance:F"):
        with pytest.raises(ValueError, match="Unknown policy"):
            parse_policy(bad)
    with pytest.raises(ValueError, match="rows' classes"):
        Strengthen("X").check_classes(["F", "M"])
    assert 0.0 in Balance.default_feature_factors and 0.5 in Balance.default_feature_factors
    assert Strengthen.default_feature_factors == (1.0, -1.0)


def test_refinement_adds_geometric_points_around_the_best_the_onset_and_the_failure():
    #        lr   feasible score acts
    points = [(0.1, True, 0.0, False), (0.2, True, 0.0, False), (0.5, True, 0.1, True), (1.0, True, 0.3, True),
              (2.0, False, 0.5, True), (5.0, False, 0.6, True)]
    geometric = lambda *pairs: sorted(a * (b / a) ** (j / 4) for a, b in pairs for j in (1, 2, 3))  # noqa: E731
    # the best (1.0) is cut off by a guard at 2.0: above it; the onset (0.2 -> 0.5); the failure (1.0 -> 2.0)
    assert refinement_lrs(points, n_points=3) == pytest.approx(geometric((0.2, 0.5), (1.0, 2.0)))
    interior = [(0.1, True, 0.0, True), (0.2, True, 0.4, True), (0.5, True, 0.1, True), (1.0, False, 0.0, True)]
    # an interior optimum (0.2, the next rate feasible and worse): both sides; the failure (0.5 -> 1.0)
    assert refinement_lrs(interior, n_points=3) == pytest.approx(geometric((0.1, 0.2), (0.2, 0.5), (0.5, 1.0)))
    assert refinement_lrs([(0.1, False, 0.0, False), (0.2, False, 0.0, False)]) == []
    with pytest.raises(ValueError, match="positive"):
        refinement_lrs([(0.0, True, 0.0, False), (1.0, True, 0.0, False)])


def test_debias_minimises_the_gap_within_the_mass_margin_control_and_lms_guards():
    # base: P(F) = (0.1 + 0.5) / 2 = 0.3 and P(M) = 0.3, total 0.6; gap 0.2; control margin 2.0
    base = metrics(0, 0, gap=0.2, control=1.0, margin=2.0)
    table = [
        metrics(0, 10, gap=0.10, control=1.0, margin=1.9),  # feasible
        metrics(0, 20, gap=0.06, control=1.0, margin=1.81),  # feasible, the smallest feasible gap: chosen
        metrics(0, 30, gap=0.05, f_on_f=0.3, m_on_m=0.3, control=1.0, margin=1.9),  # total 0.4 < 0.9 x 0.6
        metrics(0, 40, gap=0.04, control=1.0, margin=1.79),  # margin below 0.9 x 2.0 = 1.8
        metrics(0, 50, gap=0.03, control=0.99, margin=1.9),  # one control flipped (control_floor=1.0)
        metrics(0, 60, gap=0.02, lms=0.98, control=1.0, margin=1.9),  # LMS below 0.99 x base
    ]
    best, scored = choose(Debias(), table, base, control_floor=1.0)
    assert (best.lr, best.score) == (20, pytest.approx(-0.06))
    assert [c.feasible for c in scored] == [True, True, False, False, False, False]
    assert "total probability" in scored[2].reasons[0] and "control margin" in scored[3].reasons[0]
    assert "control accuracy" in scored[4].reasons[0] and "LMS" in scored[5].reasons[0]
    # a looser margin floor admits lr 40 (1.79 >= 0.8 x 2.0), which then wins with the smaller gap
    best, _ = choose(Debias(margin_floor=0.8), table, base, control_floor=1.0)
    assert best.lr == 40
    # without control rows the margin guard is off
    plain = [metrics(0, 40, gap=0.04)]
    assert score_candidates(Debias(), plain, metrics(0, 0, gap=0.2))[0].feasible


def test_debias_parses_from_its_name_and_round_trips_its_floors():
    policy = parse_policy("debias")
    assert isinstance(policy, Debias) and (policy.mass_floor, policy.margin_floor) == (0.9, 0.9)
    assert policy.to_dict() == {"name": "debias", "mass_floor": 0.9, "margin_floor": 0.9}
    with pytest.raises(ValueError, match="Unknown policy"):
        parse_policy("debias:F")


def test_control_scores_count_the_rows_their_own_class_wins_and_average_the_log_odds():
    import torch

    from gradiend_peft.evaluation.measure import LOG_FLOOR, control_scores, log_odds

    probs = torch.tensor([[0.6, 0.2], [0.1, 0.3], [0.5, 0.25], [0.0, 0.4]], dtype=torch.float64)
    rows = ["M", "F", "F", "M"]  # columns: M, F
    expected = [math.log(0.6 / 0.2), math.log(0.3 / 0.1), math.log(0.25 / 0.5), math.log(LOG_FLOOR / 0.4)]
    assert log_odds(probs, rows, ("M", "F")).tolist() == pytest.approx(expected)
    accuracy, margin = control_scores(probs, rows, ("M", "F"))
    assert accuracy == 0.5 and margin == pytest.approx(sum(expected) / 4)
    with pytest.raises(ValueError, match="two classes"):
        log_odds(torch.ones(1, 3), ["A"], ("A", "B", "C"))
