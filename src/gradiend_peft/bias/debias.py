"""Debiasing steps of the command line's ``demo``: its settings, the study's rows for the general steps (training rows
by name, the neutral text's excluded pronoun forms, control rows, the rows of the ``debias`` search), the held-out
report of a chosen rewrite and the bias benchmarks.

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
from .gender.pronouns import related_forms
from .gender.templates import context_controls, neutral_context_rows, pronoun_classes

logger = logging.getLogger(__name__)

DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "gradiend-demo",
    "classes": "M:he,F:she",
    "layers": "20-29",
    "training_rows": "occupations",
    "policies": "debias",
    "rows_per_gradient": 16,
    "max_steps": 100,
    "eval_steps": 25,
    "save_steps": 25,
    "logging_steps": 5,
    "max_test_rows": 64,
    "neutral_rows": 48,
    "control_rows": 200,
    "control_floor": 1.0,
    "lrs": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
    "feature_factors": [-1.0, -0.5, 0.0, 0.5, 1.0],
    "refine_rounds": 1,
}
"""The demo's settings: he/she on SmolLM2-135M, blocks 20-29 (35.4M target weights), trained on stereotyped-occupation
rows (16 rows per gradient, 100 steps); the debias search on neutral-context rows with 200 control rows that may not
lose accuracy, over a grid where SmolLM2's edits act (rates below 1 leave it unchanged), refined once."""


def template_training_rows(name: str, feature, seed: int = 0):
    """The he/she template rows ``--training_rows`` names: ``occupations`` (stereotyped occupations with the
    stereotypical pronoun), ``names`` (first names), ``definitional`` (nouns and names whose meaning decides the
    pronoun) or ``attributes``; a `datasets.DatasetDict` like `gradiend_peft.data.mine_pairs`'s.

    Raises:
        ValueError: for another name (the message lists them).
    """
    from .gender import attribute_rows, definitional_rows, name_rows, occupation_rows

    makers = {"occupations": occupation_rows, "names": name_rows, "definitional": definitional_rows,
              "attributes": attribute_rows}
    if name not in makers:
        raise ValueError(f"training_rows must be one of {['corpus', *makers]}, got {name!r}.")
    return makers[name](feature, seed=seed)


def neutral_exclude_words(feature) -> list[str]:
    """The words neutral text leaves out beside the feature's: the other forms of its pronouns ("his" for "he")."""
    return related_forms(feature)


def control_rows(feature, count: int, split: str = "search", seed: int = 0) -> list[dict[str, Any]]:
    """Rows whose class the context decides (`gradiend_peft.bias.gender.context_controls`) for a feature with ``he`` and
    ``she`` in its two classes; ``[]`` for any other feature (or ``count=0``)."""
    try:
        pronoun_classes(feature)
    except ValueError:
        return []
    return list(context_controls(feature, split, count=count, seed=seed)) if count else []


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



def held_out_heading(policy: str, n_controls: int) -> str:
    """The line above the demo's held-out table: what chose the rewrite and what measures it."""
    return (f"Rewrite chosen by the {policy} policy on the search split (neutral-context rows, {n_controls} "
            "control rows that may not lose accuracy, LMS >= 0.99 x base); measured on the held-out split (other "
            "templates, occupations and control subjects):")


def benchmark_lines(benchmarks: dict[str, Any]) -> list[str]:
    """The demo's benchmark table of base and chosen rewrite (`bias_benchmarks`' reports), with its heading."""
    from .benchmarks import compare_reports

    return ["Gender bias benchmarks of the base model and the chosen rewrite (StereoSet gender, CrowS-Pairs, Wino):",
            compare_reports(benchmarks)]
