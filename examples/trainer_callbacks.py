"""transformers callbacks with GRADIEND training: early stopping on the correlation, and a callback of your own.

`GradiendTrainer` is transformers' `Trainer`, so any `TrainerCallback` works. GRADIEND's own callbacks (sign
normalisation, best adapter, convergence verdict) run first, so yours see the metrics after normalisation.
This example trains on a tiny GPT-2 made on the spot (no download):

- `EarlyStoppingCallback` stops when ``eval_abs_correlation`` (``metric_for_best_model``'s default) stops improving;
- `ClassMeanLogger`, a callback written here, records every evaluation's class means and writes them to a CSV file,
  and stops training once both class means are beyond a margin.

    python examples/trainer_callbacks.py          # about 20 seconds
    python examples/trainer_callbacks.py --fast   # about 10 seconds
"""

from __future__ import annotations

import argparse
import csv
import os

import torch
from transformers import EarlyStoppingCallback, TrainerCallback


class ClassMeanLogger(TrainerCallback):
    """Records ``eval_mean_<class>`` after every evaluation; stops training when both are beyond ``margin``.

    GRADIEND's `SignNormalizationCallback` runs before this one: when it flipped the adapter after this evaluation
    (the first class encoded negative), ``metrics`` still hold the values measured before the flip and carry
    ``eval_sign_flipped = 1.0``; from the next evaluation on the first class encodes positive.
    """

    def __init__(self, classes: list[str], csv_path: str, margin: float = 0.9) -> None:
        self.classes = classes
        self.csv_path = csv_path
        self.margin = margin
        self.rows: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        row = {"step": state.global_step, "correlation": metrics["eval_correlation"]}
        row.update({name: metrics[f"eval_mean_{name}"] for name in self.classes})
        row["flipped"] = bool(metrics.get("eval_sign_flipped", 0.0))
        self.rows.append(row)
        if state.global_step > 0 and not row["flipped"] and all(abs(row[name]) >= self.margin for name in self.classes):
            print(f"ClassMeanLogger: both class means beyond {self.margin} at step {state.global_step}; stopping.")
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="Fewer rows and steps.")
    parser.add_argument("--output-dir", default="outputs/examples/trainer_callbacks")
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    os.makedirs(options.output_dir, exist_ok=True)

    from peft import get_peft_model

    from gradiend_peft import GradiendConfig
    from gradiend_peft.data import mine_pairs
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments
    from tiny_models import english_texts, gpt2_tokenizer, tiny_gpt2

    texts = english_texts()
    tokenizer = gpt2_tokenizer(texts[::8])
    pairs = mine_pairs(texts, {"M": ["he"], "F": ["she"]}, min_context_words=2, seed=0,
                       max_rows_per_class=100 if options.fast else 400, progress=False)
    model = get_peft_model(tiny_gpt2(tokenizer), GradiendConfig(feature_classes=["M", "F"], init_seed=0))

    class_means = ClassMeanLogger(["M", "F"], os.path.join(options.output_dir, "class_means.csv"), margin=0.9)
    early_stopping = EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=0.001)
    args = GradiendTrainingArguments(
        output_dir=os.path.join(options.output_dir, "training"), rows_per_gradient=8, learning_rate=1e-4,
        max_steps=40 if options.fast else 200, eval_steps=5, save_steps=5, logging_steps=5,
        load_best_model_at_end=True,  # EarlyStoppingCallback needs it (and matching eval/save steps)
        save_total_limit=1, report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer, callbacks=[early_stopping, class_means])
    trainer.train()

    print(f"stopped after {trainer.state.global_step} of {args.max_steps} steps")
    print("step  correlation    mean M    mean F  sign flipped after")
    for row in class_means.rows:
        print(f"{row['step']:>4}  {row['correlation']:+11.3f}  {row['M']:+8.3f}  {row['F']:+8.3f}  {row['flipped']}")
    print(f"verdict: converged={trainer.training_summary['converged']}, best step {trainer.training_summary['best_step']}")
    print(f"class means written to {class_means.csv_path}")


if __name__ == "__main__":
    main()
