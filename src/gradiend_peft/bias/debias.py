"""Debiasing steps of the command line: the held-out report of a chosen rewrite and the bias benchmarks.

The rewrite search of the ``debias`` policy runs on the *search* split of the neutral-context rows
(`gradiend_peft.bias.gender.neutral_context_rows`: templates x occupations whose context does not decide the pronoun) with
the search split's control rows (`context_controls`). What is reported is measured on the *report* split: other
templates, other occupations and other control subjects, none of which the search (or the occupation training rows)
saw, so the numbers measure how the edit generalises.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from ..atomic import atomic_write_json
from .gender.templates import context_controls, neutral_context_rows, pronoun_classes

logger = logging.getLogger(__name__)


def search_rows(feature) -> Optional[list[dict[str, Any]]]:
    """The neutral-context rows the ``debias`` search chooses on (``None`` for a feature without he/she)."""
    try:
        pronoun_classes(feature)
    except ValueError:
        return None
    return list(neutral_context_rows(feature, "search"))


def held_out_report(peft_model, tokenizer, feature, neutral: Sequence[str], chosen: Optional[tuple[float, float]],
                    n_controls: int, out: str) -> list[dict[str, Any]]:
    """Base and chosen rewrite on the report split (rows, controls, LMS); one table row each; saved as
    ``metrics/debias_report.json``."""
    from ..evaluation import measure_rewrites
    from ..evaluation.measure import preference

    rows = list(neutral_context_rows(feature, "report"))
    controls = list(context_controls(feature, "report", count=n_controls))
    rewrites = [(0.0, 0.0)] + ([chosen] if chosen is not None else [])
    measured = measure_rewrites(peft_model, rows, neutral, rewrites, tokenizer=tokenizer, control=controls,
                                classes={c: list(feature.classes[c]) for c in feature.pair})
    classes = list(feature.pair)
    words = {c: "/".join(feature.classes[c]) for c in classes}
    row_classes = [r["factual_class"] for r in rows]  # the stereotypical class of each occupation
    table = []
    for (metrics, probs), name in zip(measured, ["base", "debiased"]):
        a, b = classes
        table.append({
            "model": name,
            f"P({words[a]})": metrics.class_probs[a],
            f"P({words[b]})": metrics.class_probs[b],
            "|gap|": metrics.mean_abs_gap,
            "total": metrics.class_probs[a] + metrics.class_probs[b],
            "stereotype_pref": preference(probs, row_classes, classes),
            "control_acc": metrics.control_accuracy,
            "LMS": metrics.lms,
            "ff": None if name == "base" else f"{metrics.feature_factor:+g}",
            "lr": None if name == "base" else f"{metrics.lr:.3g}",
        })
    atomic_write_json(os.path.join(out, "metrics", "debias_report.json"),
                      {"rows": len(rows), "controls": len(controls), "table": table})
    return table


def report_lines(table: list[dict[str, Any]]) -> list[str]:
    """The held-out verdict in words: the gap cut, the total probability kept, the controls and the LMS."""
    if len(table) < 2:
        return ["No rewrite passed the guards on the search split; nothing to report."]
    base, edit = table

    def ratio(key: str) -> float:
        return edit[key] / base[key] if base[key] else float("nan")

    return [
        f"held-out mean |gap| {base['|gap|']:.4f} -> {edit['|gap|']:.4f} ({1 - ratio('|gap|'):+.1%} cut); total "
        f"pronoun probability {ratio('total'):.3f} x base; control accuracy {edit['control_acc']:.3f} (base "
        f"{base['control_acc']:.3f}); LMS {ratio('LMS'):.4f} x base"
    ]


def bias_benchmarks(peft_model, tokenizer, chosen: Optional[tuple[float, float]], out: str, batch_size: int = 32,
                    max_items: Optional[int] = None) -> dict[str, Any]:
    """StereoSet, CrowS-Pairs and Wino (gender) of the base and of the chosen rewrite (steered); each report saved
    as ``metrics/bias_<name>.json`` (``max_items``: at most this many items per benchmark, for smoke tests)."""
    from .benchmarks import run_bias_benchmarks

    options = dict(batch_size=batch_size, max_items=max_items)
    reports = {"base": run_bias_benchmarks(peft_model, tokenizer, **options)}
    if chosen is not None:
        with peft_model.base_model.steer(*chosen, cache=True):
            reports["debiased"] = run_bias_benchmarks(peft_model, tokenizer, **options)
    for name, report in reports.items():
        report.save_json(os.path.join(out, "metrics", f"bias_{name}.json"))
    return reports
