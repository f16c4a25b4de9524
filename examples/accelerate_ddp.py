"""Training a GRADIEND adapter on several processes with accelerate (DDP), unchanged from a one-process script.

`GradiendTrainer` is transformers' `Trainer`, so `accelerate launch` runs it data-parallel: each process takes every
other row group, DDP averages the adapter's gradients, and evaluation splits the validation groups and gathers
the encodings (every process computes the same metrics). Two processes train the same adapter as one process with
``gradient_accumulation_steps=2``.

On a CPU-only machine (torchrun with the gloo backend):

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/accelerate_ddp.py --fast

On one machine with 2 GPUs: ``accelerate launch --num_processes 2 examples/accelerate_ddp.py``. Several machines:
``accelerate config`` on each (or ``--num_machines N --machine_rank R --main_process_ip HOST``), then the same.
Without a launcher, ``python examples/accelerate_ddp.py`` trains on one process.
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="Fewer rows and steps.")
    parser.add_argument("--output-dir", default="outputs/examples/accelerate_ddp")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process

    from peft import get_peft_model

    import gradiend_peft
    from gradiend_peft import GradiendConfig
    from gradiend_peft.data import mine_pairs
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments
    from tiny_models import english_texts, gpt2_tokenizer, tiny_gpt2

    # every process builds the same tokenizer, model and rows (same seeds); accelerate shards the row groups
    texts = english_texts()
    tokenizer = gpt2_tokenizer(texts[::8])
    pairs = mine_pairs(texts, {"M": ["he"], "F": ["she"]}, min_context_words=2, seed=0,
                       max_rows_per_class=80 if options.fast else 400, progress=False)
    model = get_peft_model(tiny_gpt2(tokenizer), GradiendConfig(feature_classes=["M", "F"], init_seed=0))

    args = GradiendTrainingArguments(
        output_dir=os.path.join(options.output_dir, "training"), rows_per_gradient=8, learning_rate=1e-4,
        max_steps=10 if options.fast else 100, eval_steps=5 if options.fast else 25, logging_steps=5,
        gradient_accumulation_steps=options.gradient_accumulation_steps, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0,
        use_cpu=not torch.cuda.is_available(),  # on CPUs: accelerate's MULTI_CPU state (gloo), so evaluation gathers
    )
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer)
    trainer.train()

    if trainer.is_world_process_zero():  # one process writes
        gradiend_peft.save_adapter(model, os.path.join(options.output_dir, "adapter"))
        summary = trainer.training_summary
        record = {"world_size": args.world_size, "global_step": trainer.state.global_step,
                  "row_groups_per_step": args.world_size * args.gradient_accumulation_steps,
                  "converged": summary["converged"], "correlation": summary["correlation"],
                  "class_means": summary["class_means"]}
        with open(os.path.join(options.output_dir, "run.json"), "w") as handle:
            json.dump(record, handle, indent=2)
        print(json.dumps(record))
    trainer.end_training()  # every process: release DDP, then destroy the process group, before exit


if __name__ == "__main__":
    main()
