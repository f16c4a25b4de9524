"""Plots: valid PNG files from real reports and results (and their JSON forms); clear refusals of empty input."""

import json

import pytest

pytest.importorskip("matplotlib")

from gradiend_peft.evaluation import Balance, EncoderReport, GroupStats, RewriteResult, score_candidates, select_best
from gradiend_peft.plotting import (
    plot_convergence,
    plot_encoder_distributions,
    plot_probability_shifts,
    plot_rewrite_grid,
)

from test_rewrite_policies import metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    from matplotlib.image import imread

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def encoder_report():
    rows = tuple({"text": f"t{i} [MASK]", "factual": w, "factual_class": c, "expected": s, "encoding": s * (0.2 + i / 20)}
                 for i, (w, c, s) in enumerate([("he", "M", 1.0), ("she", "F", -1.0), ("him", "M", 1.0),
                                                ("her", "F", -1.0)] * 3))
    values = lambda cls: [r["encoding"] for r in rows if r["factual_class"] == cls]  # noqa: E731
    return EncoderReport(
        correlation=0.9, accuracy=1.0, n_rows=len(rows), rows=rows, source="alternative",
        classes={c: GroupStats.of(values(c)) for c in ("M", "F")}, words={},
        neutral=GroupStats.of([0.01, -0.02]), neutral_rows=tuple(
            {"text": "n [MASK]", "factual": "dog", "factual_class": None, "expected": 0.0, "encoding": v}
            for v in (0.01, -0.02)),
    )


def rewrite_result(best=True):
    base = metrics(0, 0, bpi=0.2)
    table = [metrics(ff, lr, bpi=0.3 + ff / 10 + lr / 100, lms=1.0 if lr < 5 else 0.5)
             for ff in (-1.0, 0.0, 0.5, 1.0) for lr in (0.1, 1.0, 2.5, 10.0)]
    scored = score_candidates(Balance(), table, base)
    base_scored = score_candidates(Balance(), [base], base)[0]
    chosen = select_best(scored, base_scored) if best else None
    return RewriteResult(
        policy={"name": "balance", "lms_power": 1.0}, classes=("F", "M"), base=base_scored, candidates=tuple(scored),
        best=chosen, lms_floor=0.99, control_floor=0.95, row_classes=("F", "F", "M", "M"),
        base_row_probs=((0.5, 0.1), (0.4, 0.2), (0.1, 0.6), (0.2, 0.5)),
        best_row_probs=((0.35, 0.2), (0.3, 0.25), (0.2, 0.4), (0.25, 0.35)) if best else None,
    )


def test_convergence_plot_from_trainer_logs(tmp_path):
    logs = [{"step": s, "loss": 1 / (s + 1), "learning_rate": 1e-5} for s in range(0, 100, 10)]
    logs += [{"step": s, "eval_correlation": s / 100, "eval_mean_M": 0.5} for s in range(0, 100, 25)]
    assert_png(plot_convergence(logs, str(tmp_path / "convergence.png"), title="training"))
    assert_png(plot_convergence(logs, str(tmp_path / "only.png"), keys=["eval_correlation"]))


def test_convergence_plot_refuses_empty_logs(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_convergence([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no step"):
        plot_convergence([{"loss": 1.0}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="Nothing to plot"):
        plot_convergence([{"step": 1, "learning_rate": 1e-5}], str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_encoder_distribution_plot_from_a_report_and_its_json(tmp_path):
    report = encoder_report()
    assert_png(plot_encoder_distributions(report, str(tmp_path / "encoder.png")))
    data = json.loads(json.dumps(report.to_dict()))
    assert_png(plot_encoder_distributions(data, str(tmp_path / "encoder_json.png")))


def test_encoder_distribution_plot_refuses_an_empty_report(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plot_encoder_distributions({"rows": []}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="None"):
        plot_encoder_distributions(None, str(tmp_path / "x.png"))


def test_rewrite_heatmap_and_probability_shifts(tmp_path):
    result = rewrite_result()
    assert result.best is not None
    assert_png(plot_rewrite_grid(result, str(tmp_path / "grid.png")))
    assert_png(plot_rewrite_grid(result.to_dict(), str(tmp_path / "grid_lms.png"), metric="lms"))
    assert_png(plot_probability_shifts(result, str(tmp_path / "shifts.png")))


def test_rewrite_plots_refuse_empty_input(tmp_path):
    empty = rewrite_result(best=False)
    with pytest.raises(ValueError, match="chose no candidate"):
        plot_probability_shifts(empty, str(tmp_path / "x.png"))
    assert_png(plot_rewrite_grid(empty, str(tmp_path / "grid.png")))  # the grid without a chosen cell is fine
    data = empty.to_dict()
    data["candidates"] = []
    with pytest.raises(ValueError, match="no candidates"):
        plot_rewrite_grid(data, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="metric 'nonsense'"):
        plot_rewrite_grid(rewrite_result(), str(tmp_path / "x.png"), metric="nonsense")
    assert not (tmp_path / "x.png").exists()
