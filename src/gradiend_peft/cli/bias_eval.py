"""``gradiend-peft bias-eval``: the field's gender-bias benchmarks (StereoSet, CrowS-Pairs, Wino; see
`gradiend_peft.evaluation.bias`) on a base model, an adapter's rewrite, or a merged folder, as a before/after table.

- ``--model M``: scores ``M`` (an embedded name, a Hub id or a folder, e.g. ``<out>/merged``); ``--compare_to B``
  scores ``B`` beside it (its base).
- ``--model M --adapter A`` with ``--feature_factor F --lr L`` (or ``--rewrite_result`` of a saved search): scores the
  base ``M`` and ``M`` steered by the rewrite, without writing any weight.

Every report is written to ``<output_dir>/metrics/bias_<name>.json``; the table is printed with the data's licence.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .steps import format_safe_name, load_adapter, load_base, setup

logger = logging.getLogger(__name__)


def _rewrite_values(args) -> tuple[float, float]:
    if args.rewrite_result:
        with open(args.rewrite_result, encoding="utf-8") as handle:
            best = json.load(handle).get("best")
        if not best:
            raise ValueError(f"{args.rewrite_result} records no chosen rewrite (its search chose nothing).")
        return float(best["feature_factor"]), float(best["lr"])
    if args.feature_factor is None or args.lr is None:
        raise ValueError("With --adapter, give the rewrite: --feature_factor F --lr L, or --rewrite_result "
                         "<output_dir>/metrics/rewrite_<policy>.json.")
    return float(args.feature_factor), float(args.lr)


def run(run_args, model_args, output, bias_args) -> dict[str, Any]:
    """Scores the models the options name; prints the table; returns ``{name: BiasBenchmarkReport}``."""
    from dataclasses import replace

    from ..evaluation.bias import compare_reports, run_bias_benchmarks

    setup(run_args)
    benchmarks = [b.strip() for b in bias_args.benchmarks.split(",") if b.strip()]
    options = dict(benchmarks=benchmarks, batch_size=bias_args.batch_size, max_items=bias_args.max_items)
    reports: dict[str, Any] = {}
    if bias_args.compare_to:
        other, other_tokenizer = load_base(replace(model_args, model=bias_args.compare_to))
        reports[bias_args.compare_to] = run_bias_benchmarks(other, other_tokenizer, **options)
        del other
    base, tokenizer = load_base(model_args)
    if run_args.adapter:
        feature_factor, lr = _rewrite_values(bias_args)
        peft_model = load_adapter(base, run_args, output.output_dir)
        reports["base"] = run_bias_benchmarks(peft_model, tokenizer, **options)
        with peft_model.base_model.steer(feature_factor, lr):
            reports[f"rewrite ff {feature_factor:+g} lr {lr:.3g}"] = run_bias_benchmarks(peft_model, tokenizer, **options)
    else:
        reports[model_args.model] = run_bias_benchmarks(base, tokenizer, **options)
    for name, report in reports.items():
        report.save_json(os.path.join(output.output_dir, "metrics", f"bias_{format_safe_name(name)}.json"))
    print(compare_reports(reports))
    return reports
