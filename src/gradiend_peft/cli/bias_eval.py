"""``gradiend-peft bias-eval``: the bias study's benchmarks (`gradiend_peft.bias.benchmarks`) for each of its domains
(`DOMAINS`), on a base model, an adapter's rewrite, or a merged folder, as a before/after table with paired
statistics.

- ``--model M``: scores ``M`` (an embedded name, a Hub id or a folder, e.g. ``<out>/merged``); ``--compare_to B``
  scores ``B`` beside it (its base), and the table gives the paired change from ``B`` to ``M``.
- ``--model M --adapter A`` with ``--feature_factor F --lr L`` (or ``--rewrite_result`` of a saved search): scores the
  base ``M`` and ``M`` steered by the rewrite, without writing any weight.
- ``--domain A,B``: one table per domain (default: `DEFAULT_DOMAIN`).

Every report is written to ``<output_dir>/metrics/bias_<name>.json`` (``bias_<name>_<domain>.json`` outside
`DEFAULT_DOMAIN`);
each table is printed with the data's licence.
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


def _names(value: str, option: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise ValueError(f"{option} names nothing; give a comma-separated list (see gradiend-peft bias-eval --help).")
    return names


def run(run_args, model_args, output, bias_args) -> dict[str, dict[str, Any]]:
    """Scores the models the options name for each domain; prints one table per domain; returns
    ``{domain: {name: BiasBenchmarkReport}}``."""
    from dataclasses import replace

    from ..bias.benchmarks import DEFAULT_DOMAIN, bias_domain, compare_reports, run_bias_benchmarks

    setup(run_args)
    domains = _names(bias_args.domain or DEFAULT_DOMAIN, "--domain")
    for domain in domains:
        bias_domain(domain)  # an unknown domain is refused before any model is loaded
    if bias_args.compare_to and bias_args.compare_to == model_args.model:
        raise ValueError(f"--compare_to names the model --model already scores ({model_args.model!r}); give its base "
                         "(or another model) to compare with.")
    benchmarks = None if bias_args.benchmarks is None else _names(bias_args.benchmarks, "--benchmarks")
    options = dict(benchmarks=benchmarks, batch_size=bias_args.batch_size, max_items=bias_args.max_items)
    reports: dict[str, dict[str, Any]] = {domain: {} for domain in domains}
    if bias_args.compare_to:
        other, other_tokenizer = load_base(replace(model_args, model=bias_args.compare_to))
        for domain in domains:
            reports[domain][bias_args.compare_to] = run_bias_benchmarks(other, other_tokenizer, domain=domain, **options)
        del other
    base, tokenizer = load_base(model_args)
    if run_args.adapter:
        feature_factor, lr = _rewrite_values(bias_args)
        peft_model = load_adapter(base, run_args, output.output_dir)
        name = f"rewrite ff {feature_factor:+g} lr {lr:.3g}"
        for domain in domains:
            reports[domain]["base"] = run_bias_benchmarks(peft_model, tokenizer, domain=domain, **options)
            with peft_model.base_model.steer(feature_factor, lr):
                reports[domain][name] = run_bias_benchmarks(peft_model, tokenizer, domain=domain, **options)
    else:
        for domain in domains:
            reports[domain][model_args.model] = run_bias_benchmarks(base, tokenizer, domain=domain, **options)
    for domain, named in reports.items():
        suffix = "" if domain == DEFAULT_DOMAIN else f"_{domain}"
        for name, report in named.items():
            report.save_json(os.path.join(output.output_dir, "metrics", f"bias_{format_safe_name(name)}{suffix}.json"))
        print(compare_reports(named))
    return reports
