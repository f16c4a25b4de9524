"""``gradiend-peft demo``: the whole debiasing workflow on a real model (SmolLM2-135M by default).

1. train GRADIEND on the study's rows (its settings and rows: `gradiend_peft.bias.debias`) and evaluate the encoder
   on held-out rows;
2. search the rewrite with the ``debias`` policy on the study's search rows, guarded by the LMS and by control rows
   whose context decides the class;
3. report base and chosen rewrite on the study's held-out split;
4. score both on the study's benchmarks (`gradiend_peft.bias.benchmarks`).
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..bias.debias import (
    DEMO_DEFAULTS,
    benchmark_lines,
    bias_benchmarks,
    control_rows,
    held_out_heading,
    held_out_report,
    neutral_exclude_words,
    report_lines,
    search_rows,
    template_training_rows,
)
from .steps import (
    StudyRows,
    attach,
    evaluate,
    fast_mode,
    format_table,
    load_base,
    maybe_merge,
    mine,
    parse_classes,
    parse_layers,
    rewrite,
    setup,
    train,
    training_line,
)

STUDY = StudyRows(training_rows=template_training_rows, exclude_words=neutral_exclude_words,
                  control_rows=control_rows, search_rows=search_rows)
"""The bias study's rows, which the demo's general steps use."""

def adapt_to_model(model_args, rewrite_args, config) -> tuple:
    """The demo's SmolLM2-135M settings left at their defaults, adapted to another model: its block range 20-29
    becomes every block where the model has fewer blocks, and its learning-rate grid (1-300, where SmolLM2's edits
    act) the search's default grid (the reference's, 0.001-100), since where edits act depends on the model."""
    if model_args.model == "smollm2-135m":
        return model_args, rewrite_args
    if model_args.layers == "20-29":
        blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
        if blocks and max(parse_layers(model_args.layers)) >= blocks:
            model_args = replace(model_args, layers=None)
    if rewrite_args.lrs == DEMO_DEFAULTS["lrs"]:
        rewrite_args = replace(rewrite_args, lrs=None)
    return model_args, rewrite_args


def run(run_args, model_args, data_args, rewrite_args, train_args) -> dict:
    """The whole workflow (see the module docstring); prints the tables and returns them."""
    if data_args.pairs:
        raise ValueError("--pairs chooses pairs for gradiend-peft train with three or more classes; the demo trains "
                         "one adapter of two classes. Leave --pairs out.")
    setup(run_args)
    if run_args.fast:
        data_args, train_args, rewrite_args = fast_mode(data_args, train_args, rewrite_args)
    out = train_args.output_dir
    base, tokenizer = load_base(model_args)
    model_args, rewrite_args = adapt_to_model(model_args, rewrite_args, base.config)
    feature = parse_classes(data_args.classes)
    peft_model = attach(base, model_args, feature, train_args.seed)
    data = mine(data_args, tokenizer, peft_model, study=STUDY)
    summary = train(peft_model, tokenizer, data, train_args, run_args)
    report = evaluate(peft_model, tokenizer, data, out, run_args)
    results, _ = rewrite(peft_model, tokenizer, data, out, rewrite_args, run_args)
    policy = next(iter(results))
    best = results[policy].best
    chosen = None if best is None else (best.feature_factor, best.lr)
    held_out = held_out_report(peft_model, tokenizer, feature, data.neutral, chosen, data_args.control_rows, out)
    benchmarks = bias_benchmarks(peft_model, tokenizer, chosen, out, batch_size=32,
                                 max_items=16 if run_args.fast else None)
    lines = [
        "",
        f"GRADIEND demo on {model_args.model}: feature {data_args.classes}, {data_args.training_rows} training rows "
        f"{data.counts}",
        f"training: {training_line(summary)}",
        f"encoder on held-out rows: {report.summary()}",
        "",
        held_out_heading(policy, len(data.control)),
        format_table(held_out),
        *report_lines(held_out),
        "",
        *benchmark_lines(benchmarks),
        "",
        f"Everything is in {os.path.abspath(out)} (adapter/, metrics/, plots/).",
    ]
    print("\n".join(lines))
    maybe_merge(peft_model, tokenizer, results, rewrite_args, out)
    return {"held_out": held_out, "benchmarks": benchmarks}
