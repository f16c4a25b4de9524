"""GRADIEND on a masked language model: a small BERT built from a config, with a tokenizer made on the spot.

No real masked LM ships in any package these machines can install, so this walkthrough makes one: a WordPiece
tokenizer trained on the package's English corpus, a small `BertForMaskedLM` from a config, a short masked-LM
pre-training so that the model has something to say about "he" and "she", then the whole GRADIEND workflow:

    mine rows -> attach the adapter -> train -> evaluate the encoder -> search the rewrite -> merge -> save/load

Run it:

    python examples/masked_lm_bert.py            # 2-3 minutes on one CPU thread
    python examples/masked_lm_bert.py --fast     # about 20 seconds: fewer rows and steps (a smoke test)

Outputs (plots, metrics, the adapter) go to ``--output-dir`` (default ``outputs/examples/masked_lm_bert``).
"""

from __future__ import annotations

import argparse
import os

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="A few rows and steps: a smoke test of the workflow.")
    parser.add_argument("--output-dir", default="outputs/examples/masked_lm_bert")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine).")
    return parser.parse_args()


def make_tokenizer(texts: list[str], vocab_size: int):
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP], [MASK], lower-casing) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def pretrain(model, tokenizer, texts: list[str], steps: int, output_dir: str) -> None:
    """A short masked-LM pre-training with transformers' Trainer (15% masks), so that P(he)/P(she) mean something."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data = datasets.Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=48), batched=True, remove_columns=["text"]
    )
    args = TrainingArguments(output_dir=os.path.join(output_dir, "mlm"), max_steps=steps, per_device_train_batch_size=32,
                             learning_rate=1e-3, warmup_steps=min(50, steps // 10), logging_steps=max(1, steps // 5),
                             save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    model.eval()


def main() -> None:
    options = parse_args()
    torch.set_num_threads(options.threads)
    out = options.output_dir
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)

    import gradiend_peft  # registers GRADIEND with peft
    from peft import get_peft_model
    from transformers import BertConfig, BertForMaskedLM

    from gradiend_peft import GradiendConfig, evaluate_encoder, search_rewrite
    from gradiend_peft.data import Feature, load_corpus, mine_neutral, mine_pairs
    from gradiend_peft.plotting import (plot_convergence, plot_encoder_distributions, plot_probability_shifts,
                                        plot_rewrite_grid)
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    # 1. Text, tokenizer and a small BERT -------------------------------------------------------------------------
    texts = [t for t in load_corpus("english") if len(t.split()) <= 30]
    feature = Feature(classes={"M": ["he"], "F": ["she"]}, name="gender")
    tokenizer = make_tokenizer(texts[:: 4 if options.fast else 2], vocab_size=2000 if options.fast else 4000)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    base = BertForMaskedLM(config)
    pretrain(base, tokenizer, texts[:: 8 if options.fast else 2], steps=40 if options.fast else 600, output_dir=out)
    base.save_pretrained(os.path.join(out, "base"))  # the base model the adapter belongs to
    tokenizer.save_pretrained(os.path.join(out, "base"))

    # 2. Rows: every "he"/"she" of the corpus becomes a row with a [MASK] slot -------------------------------------
    pairs = mine_pairs(texts, feature, max_rows_per_class=200 if options.fast else 1500, seed=0, progress=False)
    neutral = mine_neutral(texts, feature, exclude_words=["him", "his", "her", "hers", "himself", "herself"],
                           max_rows=40 if options.fast else 200, max_words=25, progress=False)["text"]
    print({split: len(rows) for split, rows in pairs.items()}, "rows;", len(neutral), "neutral texts")
    print("a row:", {k: pairs["train"][0][k] for k in ("text", "factual", "alternative", "label")})

    # 3. The adapter: every attention and MLP projection of both blocks (the default for BERT) ---------------------
    model = get_peft_model(base, GradiendConfig(feature_classes=["M", "F"], init_seed=0))
    tuner = model.base_model
    n = sum(layer.num_entries("default") for layer in tuner.gradiend_layers().values())
    print(f"objective: {model.peft_config['default'].objective}; {len(tuner.gradiend_layers())} target modules, "
          f"n = {n:,} weights")

    # 4. Training: transformers' Trainer with the GRADIEND objective ------------------------------------------------
    args = GradiendTrainingArguments(
        output_dir=os.path.join(out, "training"), rows_per_gradient=16, learning_rate=1e-4,
        max_steps=20 if options.fast else 200, eval_steps=5 if options.fast else 25, save_strategy="no",
        logging_steps=5, report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer)
    trainer.train()
    summary = trainer.training_summary
    print(f"converged: {summary['converged']} (best step {summary['best_step']}, "
          f"correlation {summary['correlation']:+.3f}, class means {summary['class_means']})")
    plot_convergence(trainer.state.log_history, os.path.join(out, "plots", "convergence.png"),
                     keys=["loss", "eval_correlation", "eval_mean_M", "eval_mean_F"])

    # 5. The encoder on held-out rows (and neutral text: it should encode near the middle) --------------------------
    report = evaluate_encoder(model, pairs["test"], tokenizer=tokenizer, neutral=neutral, progress=False)
    print(report.summary())
    plot_encoder_distributions(report, os.path.join(out, "plots", "encoder.png"))

    # 6. The rewrite: strengthen "she" under the language-modelling guard -------------------------------------------
    lrs = [1e-4, 1e-3, 1e-2, 1e-1] if options.fast else None  # None: the reference's 16 rates, 100 ... 0.001
    result = search_rewrite(model, pairs["test"], neutral, tokenizer=tokenizer, policy="strengthen:F", lrs=lrs,
                            refine=not options.fast, progress=False)
    print(result.summary())
    plot_rewrite_grid(result, os.path.join(out, "plots", "rewrite_grid.png"))
    if result.best is not None:
        plot_probability_shifts(result, os.path.join(out, "plots", "rewrite_shifts.png"))

    # 7. Share the adapter, load it back, and write the chosen rewrite into the weights ----------------------------
    gradiend_peft.save_adapter(model, os.path.join(out, "adapter"))  # atomic save_pretrained + model card
    fresh_base = BertForMaskedLM.from_pretrained(os.path.join(out, "base"))
    reloaded = gradiend_peft.load_gradiend_model(fresh_base, os.path.join(out, "adapter"))
    print("reloaded adapter:", reloaded.peft_config["default"].feature_classes,
          "encodes M to", reloaded.peft_config["default"].class_signs["M"])
    if result.best is not None:
        edited = model.merge_and_unload(**result.merge_kwargs())  # a plain BertForMaskedLM again
        print(f"merged: {type(edited).__name__} with feature_factor {result.best.feature_factor:+g}, "
              f"lr {result.best.lr:.3g}")
    print(f"plots in {os.path.join(out, 'plots')}")


if __name__ == "__main__":
    main()
