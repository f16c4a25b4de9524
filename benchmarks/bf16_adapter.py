"""What storing a GRADIEND adapter in bfloat16 costs: its size on disk and in memory, and the encoder's held-out
correlation of an adapter trained with float32 master weights and then stored in bfloat16, against the same masters
kept in float32.

    python benchmarks/bf16_adapter.py --model smollm2-135m --layers 20-29 --steps 40   # blocks 20-29 of SmolLM2
    python benchmarks/bf16_adapter.py --model tiny-bert --steps 60                       # tests' tiny BERT and rows

One training run: the base model in bfloat16, the adapter created with ``autocast_adapter_dtype=False`` (stored in
bfloat16), trained by `GradiendTrainer` (float32 masters, `gradiend_peft.training.precision`). A callback copies the
masters at the end of training, before they are rounded back. Then `evaluate_encoder` on the held-out test rows three
times: the stored bfloat16 adapter (encoder weights rounded stochastically, the rest to nearest), the masters rounded
to nearest throughout, and the masters put back in float32 (``param.data = master``). Each is saved with
``save_pretrained`` to measure the files. SmolLM2's rows are mined from the embedded English corpus (he/she) as
``gradiend-peft train`` mines them; the validation rows are evaluated once, at the end (sign normalisation). Writes ``benchmarks/results/bf16_adapter-<model>.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 1024 * 1024


class KeepMasters(TrainerCallback):
    """Copies the adapter's float32 master tensors when training ends (after the best adapter is restored)."""

    def __init__(self) -> None:
        self.masters: dict[str, torch.Tensor] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.masters = {n: p.detach().clone() for n, p in model.named_parameters() if "gradiend_" in n}


def adapter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "gradiend_" in n)


def folder_bytes(folder: str) -> int:
    return os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))


def setup(args):
    from peft import get_peft_model

    import gradiend_peft

    if args.model == "tiny-bert":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from test_training_fixtures import pairs, tokenizer
        from tiny import tiny_bert

        base = tiny_bert().to(torch.bfloat16)
        model = get_peft_model(base, gradiend_peft.GradiendConfig(init_seed=0), autocast_adapter_dtype=False)
        data = pairs("bert")
        return model, tokenizer("bert"), data["train"], data["validation"], data["test"]
    from gradiend_peft.cli.arguments import DataArguments, ModelArguments
    from gradiend_peft.cli.steps import gradiend_config, load_base, mine, parse_classes

    model_args = ModelArguments(model=args.model, layers=args.layers, dtype="bfloat16")
    data_args = DataArguments(classes="M:he,F:she", max_test_rows=args.test_rows, neutral_rows=0, control_rows=0)
    base, tokenizer = load_base(model_args)
    config = gradiend_config(base, model_args, parse_classes(data_args.classes), 42)
    model = get_peft_model(base, config, autocast_adapter_dtype=False)
    data = mine(data_args, tokenizer, model)
    return model, tokenizer, data.pairs["train"], data.pairs["validation"], data.pairs["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="An embedded model, a folder, or tiny-bert.")
    parser.add_argument("--layers", default="20-29")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rows_per_gradient", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--test_rows", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from gradiend_peft.evaluation import evaluate_encoder
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    started = time.perf_counter()
    model, tokenizer, train, validation, test = setup(args)
    stored = sorted({str(p.dtype) for n, p in model.named_parameters() if "gradiend_" in n})
    work = tempfile.mkdtemp(prefix="bf16_adapter_")
    keep = KeepMasters()
    training_args = GradiendTrainingArguments(
        output_dir=os.path.join(work, "training"), rows_per_gradient=args.rows_per_gradient, max_steps=args.steps,
        learning_rate=args.learning_rate, eval_strategy="steps", eval_steps=args.steps, eval_on_start=False,
        save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=max(1, args.steps // 8), use_cpu=True, dataloader_pin_memory=False)
    trainer = GradiendTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                              processing_class=tokenizer, callbacks=[keep])  # one evaluation, at the end: signs
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    reports, sizes = {}, {}
    for kind in ("bfloat16", "bfloat16-nearest", "float32"):
        for name, param in model.named_parameters():
            if name in keep.masters and kind == "float32":  # the masters, as training left them before rounding
                param.data = keep.masters[name]
            elif name in keep.masters and kind == "bfloat16-nearest":  # every tensor rounded to nearest
                param.data = keep.masters[name].to(torch.bfloat16)
        dtypes = sorted({str(p.dtype) for n, p in model.named_parameters() if "gradiend_" in n})
        report = evaluate_encoder(model, test, tokenizer=tokenizer, progress=False)
        folder = os.path.join(work, kind)
        model.save_pretrained(folder)
        reports[kind] = report
        sizes[kind] = {"dtypes": dtypes, "resident_bytes": adapter_bytes(model), "file_bytes": folder_bytes(folder)}
    h = {k: torch.tensor([r["encoding"] for r in rep.rows], dtype=torch.float64) for k, rep in reports.items()}
    result = {
        "command": "python benchmarks/bf16_adapter.py " + " ".join(sys.argv[1:]), "model": args.model,
        "layers": None if args.model == "tiny-bert" else args.layers, "steps": args.steps,
        "rows_per_gradient": args.rows_per_gradient, "learning_rate": args.learning_rate, "stored_as": stored,
        "entries": model.base_model.num_entries(), "train_rows": len(train), "test_rows": len(test),
        "losses": losses, "seconds": time.perf_counter() - started,
        "adapters": {k: {**sizes[k], "correlation": reports[k].correlation, "accuracy": reports[k].accuracy,
                         "class_means": {c: s.mean for c, s in reports[k].classes.items()}} for k in reports},
        "encoding_difference_from_float32": {
            k: {"max": float((h[k] - h["float32"]).abs().max()), "mean": float((h[k] - h["float32"]).abs().mean())}
            for k in ("bfloat16", "bfloat16-nearest")},
    }
    for kind, entry in result["adapters"].items():
        print(f"{kind:>16}: file {entry['file_bytes'] / MB:8.2f} MB, resident {entry['resident_bytes'] / MB:8.2f} MB, "
              f"r = {entry['correlation']:.4f}, accuracy {entry['accuracy']:.3f}, means {entry['class_means']}")
    print(f"encodings' difference from the float32 masters: {result['encoding_difference_from_float32']}; "
          f"losses {losses}")
    out = args.out or os.path.join(HERE, "results", f"bf16_adapter-{args.model}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
