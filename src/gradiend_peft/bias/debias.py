"""The he/she study's debiasing steps for the command line's ``demo``: its settings, the study's rows for the general
steps (training rows by name, the neutral text's excluded pronoun forms, control rows, the rows of the ``debias``
search), the specific edit's pieces, its held-out report and the bias benchmarks.

The edit has two parts, each chosen on a *search* split and reported on a held-out *report* split:

- **the pronoun edit**: the occupation adapter's decoder bias (the edit of feature factor 0) with the directions of
  an adapter trained on definitional rows ("My aunt said that [MASK]") projected out (`gradiend_peft.editing.
  project_out`), so that to first order the edit leaves the definitional evidence alone; its learning rate is chosen
  by the ``debias`` policy on the search split of the neutral-context rows (`gradiend_peft.bias.gender.
  neutral_context_rows`: templates x occupations whose context does not decide the pronoun), guarded by the LMS, the
  total pronoun probability and same-frame definitional controls (accuracy not below the base's, margin at least
  0.9 x the base's);
- **the attribute edit**: the decoder bias of an adapter trained on gender -> attribute rows ("My sister is very
  [MASK]", `gradiend_peft.bias.gender.attribute_rows`), with the definitional directions projected out too; its learning
  rate is the one whose mean log-odds of the stereotyped attribute over the search split's attribute rows is closest
  to none (`gradiend_peft.evaluation.search_neutral_rewrite`), with the LMS at least 0.99 x base.

Both are combined into one adapter, ``debiased`` (`gradiend_peft.editing.combine_edits`). What is reported is
measured on the *report* split: other templates, occupations, control subjects and attribute words, none of which the
training or the searches saw, so the numbers measure how the edit generalises.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from ..atomic import atomic_write_json
from .gender.attributes import attribute_evaluation_rows
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
    "save_total_limit": 1,
    "logging_steps": 5,
    "max_test_rows": 64,
    "neutral_rows": 48,
    "control_rows": 200,
    "control_floor": 1.0,
    "lrs": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
    "feature_factors": [0.0],
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


SIDE_ROWS = {"definitional": "definitional", "attribute": "attributes"}
"""The adapters the demo trains beside the occupation adapter, and the ``--training_rows`` each is trained on."""
COMBINED = "debiased"
"""The adapter holding the combined edit (`combine_edits`); its rewrite is ``feature_factor=0, lr=1``."""


def check_study_feature(feature) -> None:
    """Refuses a feature without ``he`` and ``she`` in its two classes (the demo's study has rows for he/she only).

    Raises:
        ValueError: naming what the feature needs.
    """
    pronoun_classes(feature)


def attribute_search_rows(feature) -> list[dict[str, Any]]:
    """The attribute rows the attribute edit's search chooses on (`attribute_evaluation_rows`, search split)."""
    return list(attribute_evaluation_rows(feature, "search"))


def held_out_heading(n_controls: int) -> str:
    """The line above the demo's held-out table: what measures the combined edit."""
    return (f"The combined edit on the held-out split (other templates, occupations, control subjects and attribute "
            f"words); controls: {n_controls} definitional nouns and {n_controls} first names in the same frames, "
            "margin = mean log P(right)/P(wrong):")


def search_rows(feature) -> Optional[list[dict[str, Any]]]:
    """The neutral-context rows the ``debias`` search chooses on (``None`` for a feature without he/she)."""
    try:
        pronoun_classes(feature)
    except ValueError:
        return None
    return list(neutral_context_rows(feature, "search"))


def _measure(peft_model, tokenizer, feature, rows, neutral, controls, rewrites, adapter_name):
    from ..evaluation import measure_rewrites

    return measure_rewrites(peft_model, rows, neutral, rewrites, tokenizer=tokenizer, control=controls,
                            classes={c: list(feature.classes[c]) for c in feature.pair}, adapter_name=adapter_name)


def held_out_report(peft_model, tokenizer, feature, neutral: Sequence[str], adapter_name: Optional[str],
                    n_controls: int, out: str, attributes: bool = True) -> list[dict[str, Any]]:
    """Base and the edit (``adapter_name`` at feature factor 0, lr 1; ``None``: no edit) on the report split: the
    neutral-context rows, definitional-noun and first-name controls in the same frames (accuracy and margin), the
    attribute rows' mean log-odds and the LMS. One table row per model, saved as ``metrics/debias_report.json``."""
    import torch

    from ..evaluation import filled_row_log_odds
    from ..evaluation.measure import preference

    rows = list(neutral_context_rows(feature, "report"))
    controls = {kind: list(context_controls(feature, "report", count=n_controls, names_share=share))
                for kind, share in (("nouns", 0.0), ("names", 1.0))}
    rewrites = [(0.0, 0.0)] + ([(0.0, 1.0)] if adapter_name is not None else [])
    measured = _measure(peft_model, tokenizer, feature, rows, neutral, controls["nouns"], rewrites, adapter_name)
    # the name controls: only their metrics are read (a few rows keep the second pass short)
    names = _measure(peft_model, tokenizer, feature, rows[:8], neutral, controls["names"], rewrites, adapter_name)
    attribute_rows = list(attribute_evaluation_rows(feature, "report")) if attributes else []
    classes = list(feature.pair)
    words = {c: "/".join(feature.classes[c]) for c in classes}
    row_classes = [r["factual_class"] for r in rows]  # the stereotypical class of each occupation
    table = []
    for (metrics, probs), (name_metrics, _), model in zip(measured, names, ["base", "debiased"]):
        a, b = classes
        entry = {
            "model": model,
            f"P({words[a]})": metrics.class_probs[a],
            f"P({words[b]})": metrics.class_probs[b],
            "|gap|": metrics.mean_abs_gap,
            "total": metrics.class_probs[a] + metrics.class_probs[b],
            "stereotype_pref": preference(probs, row_classes, classes),
            "nouns_acc": metrics.control_accuracy,
            "nouns_margin": metrics.control_margin,
            "names_acc": name_metrics.control_accuracy,
            "names_margin": name_metrics.control_margin,
        }
        if attribute_rows:
            if model == "base":
                odds = filled_row_log_odds(peft_model, tokenizer, attribute_rows, progress=False)
            else:
                with peft_model.base_model.steer(0.0, 1.0, [adapter_name], cache=True):
                    odds = filled_row_log_odds(peft_model, tokenizer, attribute_rows, progress=False)
            entry["attribute_lo"] = float(odds.mean())
            entry["attribute_pref"] = float((odds > 0).to(torch.float64).mean())
        entry["LMS"] = metrics.lms
        table.append(entry)
    atomic_write_json(os.path.join(out, "metrics", "debias_report.json"),
                      {"rows": len(rows), "controls": {k: len(v) for k, v in controls.items()},
                       "attribute_rows": len(attribute_rows), "table": table})
    return table


def report_lines(table: list[dict[str, Any]]) -> list[str]:
    """The held-out verdict in words: the gap cut, the total probability kept, both control sets, the attribute
    log-odds and the LMS."""
    if len(table) < 2:
        return ["No edit passed the guards on the search split; nothing to report."]
    base, edit = table

    def ratio(key: str) -> float:
        return edit[key] / base[key] if base[key] else float("nan")

    attribute = (f"; attribute log-odds {base['attribute_lo']:+.3f} -> {edit['attribute_lo']:+.3f}"
                 if "attribute_lo" in edit else "")
    return [
        f"held-out mean |gap| {base['|gap|']:.4f} -> {edit['|gap|']:.4f} ({1 - ratio('|gap|'):+.1%} cut); total "
        f"pronoun probability {ratio('total'):.3f} x base; noun controls accuracy {edit['nouns_acc']:.3f} (base "
        f"{base['nouns_acc']:.3f}), margin {ratio('nouns_margin'):.3f} x base; name controls accuracy "
        f"{edit['names_acc']:.3f} (base {base['names_acc']:.3f}), margin {ratio('names_margin'):.3f} x base"
        f"{attribute}; LMS {ratio('LMS'):.4f} x base"
    ]


def bias_benchmarks(peft_model, tokenizer, adapter_name: Optional[str], out: str, batch_size: int = 32,
                    max_items: Optional[int] = None) -> dict[str, Any]:
    """StereoSet, CrowS-Pairs and Wino (gender) of the base and of the edit (``adapter_name`` steered at feature
    factor 0, lr 1); each report saved as ``metrics/bias_<name>.json`` (``max_items``: at most this many items per
    benchmark, for smoke tests)."""
    from .benchmarks import run_bias_benchmarks

    options = dict(batch_size=batch_size, max_items=max_items)
    reports = {"base": run_bias_benchmarks(peft_model, tokenizer, **options)}
    if adapter_name is not None:
        with peft_model.base_model.steer(0.0, 1.0, [adapter_name], cache=True):
            reports["debiased"] = run_bias_benchmarks(peft_model, tokenizer, **options)
    for name, report in reports.items():
        report.save_json(os.path.join(out, "metrics", f"bias_{name}.json"))
    return reports


def benchmark_lines(benchmarks: dict[str, Any]) -> list[str]:
    """The demo's benchmark table of base and chosen rewrite (`bias_benchmarks`' reports), with its heading."""
    from .benchmarks import compare_reports

    return ["Gender bias benchmarks of the base model and the combined edit (StereoSet gender, CrowS-Pairs, Wino):",
            compare_reports(benchmarks)]
