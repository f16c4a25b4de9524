"""Debiasing steps of the command line: the demo's specific edit, its held-out report and the bias benchmarks.

The edit has two parts, each chosen on a *search* split and reported on a held-out *report* split:

- **the pronoun edit**: the occupation adapter's decoder bias (the edit of feature factor 0) with the directions of
  an adapter trained on definitional rows ("My aunt said that [MASK]") projected out (`gradiend_peft.editing.
  project_out`), so that to first order the edit leaves the definitional evidence alone; its learning rate is chosen
  by the ``debias`` policy on the search split of the neutral-context rows (`gradiend_peft.data.
  neutral_context_rows`: templates x occupations whose context does not decide the pronoun), guarded by the LMS, the
  total pronoun probability and same-frame definitional controls (accuracy not below the base's, margin at least
  0.9 x the base's);
- **the attribute edit**: the decoder bias of an adapter trained on gender -> attribute rows ("My sister is very
  [MASK]", `gradiend_peft.data.attribute_rows`), with the definitional directions projected out too; its learning
  rate is the one whose mean log-odds of the stereotyped attribute over the search split's attribute rows is closest
  to none (`gradiend_peft.evaluation.search_neutral_rewrite`), with the LMS at least 0.99 x base.

Both are combined into one adapter, ``debiased`` (`gradiend_peft.editing.combine_edits`). What is reported is
measured on the *report* split: other templates, occupations, control subjects and attribute words, none of which the
training or the searches saw, so the numbers measure how the edit generalises.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Optional, Sequence

from ..atomic import atomic_write_json
from ..data import attribute_evaluation_rows, context_controls, neutral_context_rows, pronoun_classes

logger = logging.getLogger(__name__)

SIDE_ROWS = {"definitional": "definitional", "attribute": "attributes"}
"""The adapters the demo trains beside the occupation adapter, and the ``--training_rows`` each is trained on."""
COMBINED = "debiased"
"""The adapter holding the combined edit (`combine_edits`); its rewrite is ``feature_factor=0, lr=1``."""


def search_rows(feature) -> Optional[list[dict[str, Any]]]:
    """The neutral-context rows the ``debias`` search chooses on (``None`` for a feature without he/she)."""
    try:
        pronoun_classes(feature)
    except ValueError:
        return None
    return list(neutral_context_rows(feature, "search"))


def train_side_adapter(peft_model, tokenizer, name: str, steps: int, model_args, data_args, train_args, run_args,
                       seed: int) -> dict[str, Any]:
    """Adds the adapter ``name`` (same targets as the occupation adapter, init seed ``seed``), trains it for ``steps``
    steps on its rows (`SIDE_ROWS`), saves it to ``<output_dir>/<name>/adapter``; the occupation adapter is active
    again after. Returns the training summary."""
    from .steps import gradiend_config, mine, parse_classes, train

    active = peft_model.active_adapter
    config = gradiend_config(peft_model.get_base_model(), model_args, parse_classes(data_args.classes), init_seed=seed)
    peft_model.add_adapter(name, config)
    peft_model.set_adapter(name)
    try:
        data = mine(replace(data_args, training_rows=SIDE_ROWS[name]), tokenizer, peft_model)
        args = replace(train_args, output_dir=os.path.join(train_args.output_dir, name), max_steps=steps)
        return train(peft_model, tokenizer, data, args, run_args, adapter_name=name)
    finally:
        peft_model.set_adapter(active)


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
    from ..evaluation.bias import run_bias_benchmarks

    options = dict(batch_size=batch_size, max_items=max_items)
    reports = {"base": run_bias_benchmarks(peft_model, tokenizer, **options)}
    if adapter_name is not None:
        with peft_model.base_model.steer(0.0, 1.0, [adapter_name], cache=True):
            reports["debiased"] = run_bias_benchmarks(peft_model, tokenizer, **options)
    for name, report in reports.items():
        report.save_json(os.path.join(out, "metrics", f"bias_{name}.json"))
    return reports
