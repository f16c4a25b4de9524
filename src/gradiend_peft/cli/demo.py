"""``gradiend-peft demo``: the whole debiasing workflow on a real model (SmolLM2-135M by default).

1. train GRADIEND on the study's rows (its settings and rows: `gradiend_peft.bias.debias`) and evaluate the encoder
   on held-out rows;
2. the specific edit (`gradiend_peft.bias.debias`): train two more adapters (definitional rows, attribute rows),
   project the definitional directions out of the other two, choose the pronoun edit's learning rate with the
   ``debias`` policy on the study's search rows (guarded by the LMS and by the accuracy and margin of control rows
   whose context decides the class) and the attribute edit's with `search_neutral_rewrite`, and combine both into
   one adapter (`gradiend_peft.editing.combine_edits`);
3. report base and combined edit on the study's held-out split;
4. score both on the study's benchmarks (`gradiend_peft.bias.benchmarks`), with paired statistics.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from ..bias.debias import (
    COMBINED,
    DEMO_DEFAULTS,
    check_study_feature,
    held_out_heading,
    SIDE_ROWS,
    benchmark_lines,
    bias_benchmarks,
    control_rows,
    held_out_report,
    neutral_exclude_words,
    report_lines,
    attribute_search_rows,
    search_rows,
    template_training_rows,
)
from .steps import (
    StudyRows,
    attach,
    gradiend_config,
    evaluate,
    fast_mode,
    format_table,
    load_base,
    mine,
    parse_classes,
    parse_layers,
    rewrite,
    save_merged,
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


def train_side_adapter(peft_model, tokenizer, name: str, steps: int, model_args, data_args, train_args, run_args,
                       seed: int) -> dict[str, Any]:
    """Adds the adapter ``name`` (same targets and initialisation as the demo's first adapter), trains it for
    ``steps`` steps on its rows (`SIDE_ROWS`), saves it to ``<output_dir>/<name>/adapter``; the first adapter is
    active again after. Returns the training summary."""
    active = peft_model.active_adapter
    config = gradiend_config(peft_model.get_base_model(), model_args, parse_classes(data_args.classes), init_seed=seed)
    peft_model.add_adapter(name, config)
    peft_model.set_adapter(name)
    try:
        data = mine(replace(data_args, training_rows=SIDE_ROWS[name]), tokenizer, peft_model, study=STUDY)
        args = replace(train_args, output_dir=os.path.join(train_args.output_dir, name), max_steps=steps)
        return train(peft_model, tokenizer, data, args, run_args, adapter_name=name)
    finally:
        peft_model.set_adapter(active)


def specific_edit(peft_model, tokenizer, data, out, model_args, data_args, rewrite_args, demo_args, train_args,
                  run_args) -> dict[str, Any]:
    """Trains the side adapters, projects the definitional directions out of the two edits, searches each edit's
    learning rate on its search rows and combines the chosen edits into one adapter (`gradiend_peft.bias.debias`)."""
    from ..editing import combine_edits, project_out
    from ..evaluation import search_neutral_rewrite

    sides = {"definitional": demo_args.definitional_steps, "attribute": demo_args.attribute_steps}
    summaries = {name: train_side_adapter(peft_model, tokenizer, name, steps, model_args, data_args, train_args,
                                          run_args, seed=train_args.seed)
                 for name, steps in sides.items() if steps > 0}
    projections = {}
    if "definitional" in summaries:
        for name in ["default"] + (["attribute"] if "attribute" in summaries else []):
            projections[name] = project_out(peft_model, name, ["definitional"], drop_weight=True)
    results, _ = rewrite(peft_model, tokenizer, data, out, rewrite_args, run_args)
    best = results["debias"].best if "debias" in results else None
    edits = {} if best is None else {"default": (best.feature_factor, best.lr)}
    attribute = None
    if "attribute" in summaries:
        rows = attribute_search_rows(data.feature)
        attribute = search_neutral_rewrite(
            peft_model, tokenizer, rows, data.neutral, demo_args.attribute_lrs, adapter_name="attribute",
            lms_floor=rewrite_args.lms_floor, control=data.control or None,
            classes={c: list(data.feature.classes[c]) for c in data.feature.pair},
            control_floor=rewrite_args.control_floor)
        attribute.save_json(os.path.join(out, "metrics", "attribute_search.json"))
        if attribute.best is not None:
            edits["attribute"] = (attribute.best.feature_factor, attribute.best.lr)
    combined = combine_edits(peft_model, edits, COMBINED) if edits else None
    return {"summaries": summaries, "projections": projections, "results": results, "attribute": attribute,
            "edits": edits, "combined": combined}


def edit_lines(edit: dict[str, Any]) -> list[str]:
    """What the specific edit is made of, in words: the side adapters' training, the projections, the choices."""
    lines = [f"{name} adapter: {training_line(summary)}" for name, summary in edit["summaries"].items()]
    for name, projection in edit["projections"].items():
        cosines = ", ".join(f"{c:+.3f}" for c in projection.cosines["bias"])
        lines.append(f"{name} edit: definitional directions projected out (cosines of its bias with them {cosines}; "
                     f"norm kept {projection.kept_norm['bias']:.3f})")
    chosen = edit["edits"]
    pronoun = chosen.get("default")
    lines.append("pronoun edit chosen by the debias policy on the search split: "
                 + ("none passed the guards" if pronoun is None else f"ff {pronoun[0]:+g}, lr {pronoun[1]:.3g}"))
    if edit["attribute"] is not None:
        picked = chosen.get("attribute")
        lines += ["attribute edit, search split (mean log-odds of the stereotyped attribute: closest to 0 within the "
                  "guards):", edit["attribute"].summary(),
                  "attribute edit chosen: " + ("none" if picked is None else f"ff {picked[0]:+g}, lr {picked[1]:.3g}")]
    return lines


def run(run_args, model_args, data_args, rewrite_args, demo_args, train_args) -> dict:
    """The whole workflow (see the module docstring); prints the tables and returns them."""
    if data_args.pairs:
        raise ValueError("--pairs chooses pairs for gradiend-peft train with three or more classes; the demo trains "
                         "one adapter of two classes. Leave --pairs out.")
    setup(run_args)
    if run_args.fast:
        data_args, train_args, rewrite_args = fast_mode(data_args, train_args, rewrite_args)
        demo_args = replace(demo_args, definitional_steps=min(demo_args.definitional_steps, 2),
                            attribute_steps=min(demo_args.attribute_steps, 2), attribute_lrs=demo_args.attribute_lrs[:2])
    out = train_args.output_dir
    base, tokenizer = load_base(model_args)
    model_args, rewrite_args = adapt_to_model(model_args, rewrite_args, base.config)
    feature = parse_classes(data_args.classes)
    check_study_feature(feature)  # refuse classes the study has no rows for, before training
    peft_model = attach(base, model_args, feature, train_args.seed)
    data = mine(data_args, tokenizer, peft_model, study=STUDY)
    summary = train(peft_model, tokenizer, data, train_args, run_args, adapter_name="default")
    report = evaluate(peft_model, tokenizer, data, out, run_args)
    edit = specific_edit(peft_model, tokenizer, data, out, model_args, data_args, rewrite_args, demo_args,
                         train_args, run_args)
    combined = edit["combined"]
    held_out = held_out_report(peft_model, tokenizer, feature, data.neutral, combined, data_args.control_rows, out,
                               attributes=demo_args.attribute_steps > 0)
    benchmarks = bias_benchmarks(peft_model, tokenizer, combined, out, batch_size=32,
                                 max_items=16 if run_args.fast else None)
    lines = [
        "",
        f"GRADIEND demo on {model_args.model}: feature {data_args.classes}, {data_args.training_rows} training rows "
        f"{data.counts}",
        f"training: {training_line(summary)}",
        f"encoder on held-out rows: {report.summary()}",
        "",
        *edit_lines(edit),
        "",
        held_out_heading(data_args.control_rows),
        format_table(held_out),
        *report_lines(held_out),
        "",
        *benchmark_lines(benchmarks),
        "",
        f"Everything is in {os.path.abspath(out)} (adapter/, definitional/, attribute/, metrics/, plots/).",
    ]
    print("\n".join(lines))
    if rewrite_args.merge_policy and combined is not None:
        save_merged(peft_model, tokenizer, os.path.join(out, "merged"), feature_factor=0.0, lr=1.0,
                    adapter_name=combined)
    return {"held_out": held_out, "benchmarks": benchmarks, "edit": edit}
