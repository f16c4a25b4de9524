"""`gradiend-peft demo`: the whole workflow on a real model, with a before/after table."""

from __future__ import annotations

import os
from dataclasses import replace

from .steps import (
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


def run(run_args, model_args, data_args, rewrite_args, train_args) -> list:
    """The whole workflow: mine he/she rows, train, evaluate the encoder, search three rewrites, print a table."""
    setup(run_args)
    if run_args.fast:
        data_args, train_args, rewrite_args = fast_mode(data_args, train_args, rewrite_args)
    out = train_args.output_dir
    base, tokenizer = load_base(model_args)
    if model_args.model != "smollm2-135m" and model_args.layers == "20-29":
        layers = parse_layers(model_args.layers)
        blocks = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", 0)
        if blocks and max(layers) >= blocks:
            model_args = replace(model_args, layers=None)  # the demo's block range does not exist here
    peft_model = attach(base, model_args, parse_classes(data_args.classes), train_args.seed)
    data = mine(data_args, tokenizer, peft_model)
    summary = train(peft_model, tokenizer, data, train_args, run_args)
    report = evaluate(peft_model, tokenizer, data, out, run_args)
    results, table = rewrite(peft_model, tokenizer, data, out, rewrite_args, run_args)
    lines = [
        "",
        f"GRADIEND demo on {model_args.model}: feature {data_args.classes}, {data.counts} rows",
        f"training: {training_line(summary)}",
        f"encoder on held-out rows: {report.summary()}",
        "",
        "Before/after on held-out prompts (rewrites applied in place, chosen under the LMS and control guards):",
        format_table(table),
        "",
        f"Everything is in {os.path.abspath(out)} (adapter/, metrics/, plots/).",
    ]
    print("\n".join(lines))
    maybe_merge(peft_model, tokenizer, results, rewrite_args, out)
    return table
