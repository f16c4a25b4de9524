"""What each ``gradiend-peft`` command does, step by step (the arguments are `gradiend_peft.cli`'s dataclasses)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Optional

import torch

from .workflow import (
    FeatureData,
    format_table,
    layer_targets,
    parse_classes,
    parse_layers,
    prepare_feature_data,
    save_adapter,
    save_merged,
    save_outputs,
    summary_row,
)

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _setup(run) -> None:
    if run.threads:
        torch.set_num_threads(run.threads)


def load_base(model_args) -> tuple[torch.nn.Module, Any]:
    """Loads the base model and tokenizer (embedded names are converted once and cached)."""
    from .pretrained import load_model_and_tokenizer

    if model_args.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {model_args.dtype!r}.")
    return load_model_and_tokenizer(model_args.model, dtype=_DTYPES[model_args.dtype])


def gradiend_config(model: torch.nn.Module, model_args, feature, init_seed: Optional[int] = None) -> Any:
    """The `GradiendConfig` the model arguments describe (initialised from ``init_seed``: runs are reproducible)."""
    from .tuner.config import GradiendConfig

    layers = parse_layers(model_args.layers)
    targets: Any = model_args.target_modules
    if layers is not None:
        targets = layer_targets(model, layers, model_args.target_modules)
    return GradiendConfig(
        target_modules=targets,
        include_embeddings=model_args.include_embeddings,
        latent_dim=model_args.latent_dim,
        source=model_args.source,
        target=model_args.target,
        feature_classes=list(feature.pair),
        init_seed=init_seed,
    )


def mine(data_args, tokenizer, peft_model) -> FeatureData:
    """Mines the feature's rows, neutral texts and control rows (keeping those the tokenizer and model can use)."""
    from .data import collator_for

    config = peft_model.get_base_model().config
    max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    objective = peft_model.peft_config[peft_model.active_adapter].objective
    return prepare_feature_data(
        parse_classes(data_args.classes), corpus=data_args.corpus, text_file=data_args.text_file,
        min_context_words=data_args.min_context_words, max_rows_per_class=data_args.max_rows_per_class,
        max_test_rows=data_args.max_test_rows, neutral_rows=data_args.neutral_rows,
        control_rows=data_args.control_rows, seed=data_args.mining_seed, collator=collator_for(tokenizer, objective),
        max_length=max_length,
    )


def train(peft_model, tokenizer, data: FeatureData, train_args, run) -> dict[str, Any]:
    """Trains the adapter, saves it to ``<output_dir>/adapter`` and the convergence plot; returns the summary."""
    from .training import GradiendTrainer

    out = train_args.output_dir
    args = replace(train_args, output_dir=os.path.join(out, "training"))
    trainer = GradiendTrainer(model=peft_model, args=args, train_dataset=data.pairs["train"],
                              eval_dataset=data.pairs["validation"], processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    save_adapter(peft_model, os.path.join(out, "adapter"))
    save_outputs(out, "training_history", trainer.state.log_history)
    if run.plots:
        from .plotting import plot_convergence

        plot_convergence(trainer.state.log_history, os.path.join(out, "plots", "convergence.png"))
    return dict(trainer.training_summary or {})


def evaluate(peft_model, tokenizer, data: FeatureData, out: str, run) -> Any:
    """Evaluates the encoder on the test rows (and neutral text); saves the report and its plot."""
    from .evaluation import evaluate_encoder

    report = evaluate_encoder(peft_model, data.pairs["test"], tokenizer=tokenizer, neutral=data.neutral)
    report.save_json(os.path.join(out, "metrics", "encoder.json"))
    if run.plots:
        from .plotting import plot_encoder_distributions

        plot_encoder_distributions(report, os.path.join(out, "plots", "encoder.png"))
    logger.info("Encoder on held-out rows:\n%s", report.summary())
    return report


def rewrite(peft_model, tokenizer, data: FeatureData, out: str, rewrite_args, run) -> tuple[dict[str, Any], list]:
    """Runs the rewrite search for every policy; saves results and plots; returns them and the summary table."""
    from .evaluation import search_rewrite

    classes = list(data.feature.pair)
    words = {c: "/".join(data.feature.classes[c]) for c in classes}
    results: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    measurements: dict = {}  # candidates measured for one policy are scored, not measured again, for the next
    for policy in [p.strip() for p in rewrite_args.policies.split(",") if p.strip()]:
        result = search_rewrite(
            peft_model, data.pairs["test"], data.neutral, tokenizer=tokenizer, policy=policy,
            control=data.control or None, lms_floor=rewrite_args.lms_floor, control_floor=rewrite_args.control_floor,
            lrs=rewrite_args.lrs, feature_factors=rewrite_args.feature_factors, max_length=data.max_length,
            refine_rounds=rewrite_args.refine_rounds, measurements=measurements,
        )
        results[policy] = result
        safe = policy.replace(":", "_")
        result.save_json(os.path.join(out, "metrics", f"rewrite_{safe}.json"))
        if not table:
            table.append(summary_row("base", result.base.metrics, classes, words))
        if result.best is None:
            logger.warning("Policy %s: no candidate passed the guards; nothing to apply.", policy)
            table.append({"model": f"{policy} (none)"})
        else:
            row = summary_row(policy, result.best.metrics, classes, words)
            row["ff"], row["lr"] = f"{result.best.metrics.feature_factor:+g}", f"{result.best.metrics.lr:.3g}"
            table.append(row)
        if run.plots:
            from .plotting import plot_probability_shifts, plot_rewrite_grid

            plot_rewrite_grid(result, os.path.join(out, "plots", f"rewrite_{safe}.png"))
            if result.best is not None:
                plot_probability_shifts(result, os.path.join(out, "plots", f"shifts_{safe}.png"))
    save_outputs(out, "summary", table)
    return results, table


def _attach(base, model_args, feature, seed: int) -> Any:
    from peft import get_peft_model

    return get_peft_model(base, gradiend_config(base, model_args, feature, init_seed=seed))


def _load_adapter(base, run, out: str) -> Any:
    from .loading import load_gradiend_model

    folder = run.adapter or os.path.join(out, "adapter")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No adapter at {folder!r}: train one first (gradiend-peft train) or pass --adapter.")
    return load_gradiend_model(base, folder)


def _maybe_merge(peft_model, tokenizer, results: dict[str, Any], rewrite_args, out: str) -> Optional[str]:
    if not rewrite_args.merge_policy:
        return None
    result = results.get(rewrite_args.merge_policy)
    if result is None or result.best is None:
        raise ValueError(f"--merge_policy {rewrite_args.merge_policy!r} has no chosen rewrite to merge.")
    return save_merged(peft_model, tokenizer, os.path.join(out, "merged"), **result.merge_kwargs())


def run_train(run, model_args, data_args, train_args) -> dict[str, Any]:
    _setup(run)
    base, tokenizer = load_base(model_args)
    feature = parse_classes(data_args.classes)
    peft_model = _attach(base, model_args, feature, train_args.seed)
    data = mine(data_args, tokenizer, peft_model)
    summary = train(peft_model, tokenizer, data, train_args, run)
    evaluate(peft_model, tokenizer, data, train_args.output_dir, run)
    logger.info("Training summary: %s", summary)
    return summary


def run_evaluate(run, model_args, data_args, output) -> Any:
    _setup(run)
    base, tokenizer = load_base(model_args)
    peft_model = _load_adapter(base, run, output.output_dir)
    data = mine(data_args, tokenizer, peft_model)
    return evaluate(peft_model, tokenizer, data, output.output_dir, run)


def run_rewrite(run, model_args, data_args, output, rewrite_args) -> list:
    _setup(run)
    base, tokenizer = load_base(model_args)
    peft_model = _load_adapter(base, run, output.output_dir)
    data = mine(data_args, tokenizer, peft_model)
    results, table = rewrite(peft_model, tokenizer, data, output.output_dir, rewrite_args, run)
    print(format_table(table))
    _maybe_merge(peft_model, tokenizer, results, rewrite_args, output.output_dir)
    return table


def _fast(data_args, train_args, rewrite_args) -> tuple:
    """The demo's fast mode: a handful of steps and rows (a smoke test of the whole workflow)."""
    data_args = replace(data_args, max_rows_per_class=60, max_test_rows=16, neutral_rows=12, control_rows=8)
    train_args = replace(train_args, max_steps=4, rows_per_gradient=4, eval_steps=2, save_steps=2, logging_steps=1)
    rewrite_args = replace(rewrite_args, lrs=[0.01, 0.1, 1.0], feature_factors=[-1.0, 0.0, 1.0], refine_rounds=1)
    return data_args, train_args, rewrite_args


def _training_line(summary: dict[str, Any]) -> str:
    """The trainer's verdict in one line (the whole summary is in the adapter's config and metrics/)."""
    # the trainer keys its means by the class of the gradient the encoder read (class_signs), not the row's word
    means = ", ".join(f"{c} {m:+.2f}" for c, m in (summary.get("class_means") or {}).items())
    verdict = "converged" if summary.get("converged") else f"did not converge ({'; '.join(summary.get('reasons', []))})"
    return (f"{verdict}; best step {summary.get('best_step')} of {summary.get('global_step')}, validation "
            f"r = {summary.get('correlation', float('nan')):+.3f}, mean encoding of each class's gradients {means}, "
            f"seed {summary.get('seed')}")


def run_demo(run, model_args, data_args, rewrite_args, train_args) -> list:
    """The whole workflow: mine he/she rows, train, evaluate the encoder, search three rewrites, print a table."""
    _setup(run)
    if run.fast:
        data_args, train_args, rewrite_args = _fast(data_args, train_args, rewrite_args)
    out = train_args.output_dir
    base, tokenizer = load_base(model_args)
    if model_args.model != "smollm2-135m" and model_args.layers == "20-29":
        layers = parse_layers(model_args.layers)
        blocks = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", 0)
        if blocks and max(layers) >= blocks:
            model_args = replace(model_args, layers=None)  # the demo's block range does not exist here
    peft_model = _attach(base, model_args, parse_classes(data_args.classes), train_args.seed)
    data = mine(data_args, tokenizer, peft_model)
    summary = train(peft_model, tokenizer, data, train_args, run)
    report = evaluate(peft_model, tokenizer, data, out, run)
    results, table = rewrite(peft_model, tokenizer, data, out, rewrite_args, run)
    lines = [
        "",
        f"GRADIEND demo on {model_args.model}: feature {data_args.classes}, {data.counts} rows",
        f"training: {_training_line(summary)}",
        f"encoder on held-out rows: {report.summary()}",
        "",
        "Before/after on held-out prompts (rewrites applied in place, chosen under the LMS and control guards):",
        format_table(table),
        "",
        f"Everything is in {os.path.abspath(out)} (adapter/, metrics/, plots/).",
    ]
    print("\n".join(lines))
    _maybe_merge(peft_model, tokenizer, results, rewrite_args, out)
    return table
