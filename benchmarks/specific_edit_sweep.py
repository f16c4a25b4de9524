"""The demo's edits on the report split at several learning rates: how specific each edit is.

Reads the three adapters a demo run saved (``<demo>/adapter``: stereotyped occupations; ``<demo>/definitional``;
``<demo>/attribute``) and measures, for each edit and learning rate (feature factor 0, the decoder bias), on the
*report* split that the demo's searches never saw:

- the mean |P(he) - P(she)| over the 400 neutral-context rows (and its cut against the base), the total pronoun
  probability;
- 200 same-frame controls with a definitional noun and 200 with a first name as the subject: accuracy and margin
  (mean log P(right)/P(wrong));
- the mean log-odds of the stereotyped attribute over the report split's attribute rows;
- the LMS on the demo's 48 neutral corpus sentences.

Edits: the occupation adapter's bias as trained, and with the definitional adapter's directions projected out; the
attribute adapter's bias with them projected out. This table documents the trade-off between the learning rate, the
gap and the controls; the demo itself chooses each learning rate on the *search* split only.

    python benchmarks/specific_edit_sweep.py gradiend-demo --json /tmp/sweep.json

On 2 CPU cores: about 30 s per measured learning rate.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

PRONOUN_LRS = (30.0, 100.0, 300.0)
PROJECTED_LRS = (100.0, 200.0, 300.0, 600.0)
ATTRIBUTE_LRS = (1000.0, 2000.0, 4000.0)


def _load(demo: str):
    from gradiend_peft.bias.gender import related_forms
    from gradiend_peft.data import Feature, load_corpus, mine_neutral
    from gradiend_peft.embedded_models import load_model_and_tokenizer
    from gradiend_peft.loading import load_gradiend_model

    base, tok = load_model_and_tokenizer("smollm2-135m")
    model = load_gradiend_model(base, os.path.join(demo, "adapter"))
    for name in ("definitional", "attribute"):
        model.load_adapter(os.path.join(demo, name, "adapter", name), adapter_name=name)
    model.set_adapter("default")
    feature = Feature({"M": ["he"], "F": ["she"]})
    neutral = mine_neutral(load_corpus("english"), feature, exclude_words=related_forms(feature))
    neutral = neutral.shuffle(seed=0).select(range(48))
    return model, tok, feature, [row["text"] for row in neutral]


def _measure(model, tok, feature, neutral, adapter: str, lrs, with_base: bool) -> list[dict]:
    from gradiend_peft.bias.gender import attribute_evaluation_rows, context_controls, neutral_context_rows
    from gradiend_peft.evaluation import filled_row_log_odds, measure_rewrites

    rows = list(neutral_context_rows(feature, "report"))
    controls = {k: list(context_controls(feature, "report", count=200, names_share=s))
                for k, s in (("nouns", 0.0), ("names", 1.0))}
    attributes = list(attribute_evaluation_rows(feature, "report"))
    rewrites = ([(0.0, 0.0)] if with_base else []) + [(0.0, lr) for lr in lrs]
    classes = {"M": ["he"], "F": ["she"]}
    nouns = measure_rewrites(model, rows, neutral, rewrites, tokenizer=tok, control=controls["nouns"],
                             classes=classes, adapter_name=adapter)
    names = measure_rewrites(model, rows[:8], neutral, rewrites, tokenizer=tok, control=controls["names"],
                             classes=classes, adapter_name=adapter)
    out = []
    for (m, _), (n, _), (_, lr) in zip(nouns, names, rewrites):
        with model.base_model.steer(0.0, lr, [adapter], cache=True):
            odds = filled_row_log_odds(model, tok, attributes, progress=False)
        out.append({"lr": lr, "gap": m.mean_abs_gap, "total": sum(m.class_probs.values()),
                    "nouns_acc": m.control_accuracy, "nouns_margin": m.control_margin,
                    "names_acc": n.control_accuracy, "names_margin": n.control_margin,
                    "attribute_lo": float(odds.mean()), "lms": m.lms})
    return out


def main() -> None:
    from gradiend_peft.editing import project_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", help="the demo's output folder")
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    model, tok, feature, neutral = _load(args.demo)
    table = [dict(edit="base", **r) for r in _measure(model, tok, feature, neutral, "default", [], True)]
    table += [dict(edit="occupations", **r) for r in _measure(model, tok, feature, neutral, "default", PRONOUN_LRS, False)]
    for name in ("default", "attribute"):
        project_out(model, name, ["definitional"], drop_weight=True)
    table += [dict(edit="occupations, projected", **r)
              for r in _measure(model, tok, feature, neutral, "default", PROJECTED_LRS, False)]
    table += [dict(edit="attributes, projected", **r)
              for r in _measure(model, tok, feature, neutral, "attribute", ATTRIBUTE_LRS, False)]
    base = table[0]
    print(f"{'edit':<24} {'lr':>6} {'|gap|':>7} {'cut':>7} {'total':>6} {'noun acc':>8} {'margin':>7} {'name acc':>8} "
          f"{'margin':>7} {'attr lo':>8} {'LMS':>7}")
    for r in table:
        print(f"{r['edit']:<24} {r['lr']:>6g} {r['gap']:>7.4f} {1 - r['gap'] / base['gap']:>+7.1%} "
              f"{r['total'] / base['total']:>6.3f} {r['nouns_acc']:>8.3f} {r['nouns_margin'] / base['nouns_margin']:>7.3f} "
              f"{r['names_acc']:>8.3f} {r['names_margin'] / base['names_margin']:>7.3f} {r['attribute_lo']:>+8.3f} "
              f"{r['lms'] / base['lms']:>7.4f}")
    print(f"(total, margins and LMS as x base; {time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(table, handle, indent=2)


if __name__ == "__main__":
    main()
