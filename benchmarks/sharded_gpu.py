"""Module-sharded GRADIEND training on GPUs: per-process peak memory and step time, one process against P shards.

Launch once per process count (``run_gpu.sh`` does both when the machine has several devices)::

    torchrun --nproc_per_node 1 benchmarks/sharded_gpu.py --model smollm2-135m-shape --dtype bfloat16 --work W
    torchrun --nproc_per_node 4 benchmarks/sharded_gpu.py --model smollm2-135m-shape --dtype bfloat16 --work W

Every process trains the same rows on its own device (``cuda:LOCAL_RANK``) with ``adapter_shards`` = the number of
processes (1: the ordinary trainer), every linear layer of every block targeted. Process 0 writes
``--out`` (JSON): the world size, the adapter and AdamW bytes and ``torch.cuda.max_memory_allocated`` of each process,
the mean step time after a warm-up step, and the training losses (equal up to float round-off between the two runs).
The work folder comes from ``run_gpu.sh prepare`` (tokenizers and mined rows; the models are built from configs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-shape", help="a shape of benchmarks/prepare.py")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--work", required=True, help="the folder run_gpu.sh prepare filled")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows_per_gradient", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainerCallback

    sys.path.insert(0, HERE)
    import prepare
    from gradiend_peft import GradiendConfig
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments
    from gradiend_peft.training.sharding import adapter_bytes

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()  # without a GPU (a smoke test of this script): CPU processes, gloo
    if cuda:
        torch.cuda.set_device(local)
    device = f"cuda:{local}" if cuda else "cpu"
    spec = prepare.MODEL_SPECS[args.model]
    kind, objective = prepare.TOKENIZER_KIND[spec["family"]], prepare.OBJECTIVE[spec["family"]]
    tokenizer = prepare.build_tokenizer(kind, args.work)
    with open(os.path.join(args.work, f"rows-{kind}-{objective}.json"), encoding="utf-8") as handle:
        rows = json.load(handle)
    dtype = getattr(torch, args.dtype)
    base = prepare.build_model(args.model, tokenizer).to(device=device, dtype=dtype)
    model = get_peft_model(base, GradiendConfig(init_seed=0))  # every linear layer of every block
    training = GradiendTrainingArguments(
        output_dir=os.path.join(args.work, f"sharded-{args.model}-{args.dtype}-{world}"),
        rows_per_gradient=args.rows_per_gradient, max_steps=args.steps, eval_strategy="no", save_strategy="no",
        logging_steps=1, report_to="none", disable_tqdm=True, seed=0, adapter_shards=world,
        bf16=args.dtype == "bfloat16",
    )
    starts: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            starts.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = GradiendTrainer(model=model, args=training, train_dataset=Dataset.from_list(rows["train"]),
                              processing_class=tokenizer, callbacks=[StepClock()])
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    starts.append(time.perf_counter())
    steps = [b - a for a, b in zip(starts[1:], starts[2:])]  # the first step warms up kernels and allocators
    report = {
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else 0,
        "bytes": adapter_bytes(trainer.model.base_model.adapter_parameters(trainer.adapter_name), trainer.optimizer),
        "seconds_per_step": sum(steps) / max(len(steps), 1),
    }
    gathered = [None] * world if world > 1 else [report]
    if world > 1:
        dist.all_gather_object(gathered, report)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"model": args.model, "dtype": args.dtype, "world_size": world, "processes": gathered,
                   "device": torch.cuda.get_device_name(local) if cuda else "cpu",
                   "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        peak = max(p["peak_allocated"] for p in gathered) / 2**30
        held = max(p["bytes"]["adapter"] + p["bytes"]["optimizer"] for p in gathered) / 2**30
        print(f"{args.model} {args.dtype} on {world} process(es): peak {peak:.2f} GiB, adapter + AdamW {held:.2f} GiB "
              f"per process, {report['seconds_per_step']:.3f} s/step", flush=True)
    trainer.end_training()


if __name__ == "__main__":
    main()
