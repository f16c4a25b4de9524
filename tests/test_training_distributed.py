"""Two processes (``accelerate launch --num_processes 2``, CPU/gloo) train the same adapter as one process with the
same global batch (two row groups per optimizer step: one per process, or two accumulated).

This file is also the training script: ``python tests/test_training_distributed.py OUT GRADIENT_ACCUMULATION``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import free_port, subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(out_dir: str, accumulation: int, per_example: bool) -> None:
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    from gradiend_peft.training import GradiendTrainer
    from training_fixtures import arguments, pairs, peft_model, tokenizer

    data = pairs("bert")
    args = arguments(out_dir, learning_rate=1e-4, num_train_epochs=2, eval_steps=3,
                     gradient_accumulation_steps=accumulation, per_example=per_example,
                     use_cpu=False)  # the arguments switch use_cpu on by themselves when WORLD_SIZE > 1
    assert args.use_cpu == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
    trainer = GradiendTrainer(model=peft_model("bert"), args=args, train_dataset=data["train"],
                              eval_dataset=data["validation"], processing_class=tokenizer("bert"))
    output = trainer.train()
    if trainer.args.process_index == 0:
        trainer.save_model(os.path.join(out_dir, "final"))
        with open(os.path.join(out_dir, "run.json"), "w") as handle:
            json.dump({"world_size": trainer.args.world_size, "global_step": output.global_step,
                       "evaluations": [e for e in trainer.state.log_history if "eval_correlation" in e]}, handle)
    assert trainer.end_training() == (trainer.args.world_size > 1)


def _load(folder):
    from safetensors.torch import load_file

    with open(os.path.join(folder, "run.json")) as handle:
        run = json.load(handle)
    return run, load_file(os.path.join(folder, "final", "adapter_model.safetensors"))


@pytest.mark.parametrize("per_example", [False, True], ids=["row-groups", "per-example"])
def test_two_processes_train_the_same_adapter_as_one(tmp_path, per_example):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    script = os.path.abspath(__file__)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    mode = ["--per-example"] if per_example else []
    single = subprocess.Popen([sys.executable, script, one, "2", *mode], env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs the processes use CPU and gloo
    double = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), script, two, "1", *mode],
        env=subprocess_env(), capture_output=True, text=True, timeout=400,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert "still referenced" not in double.stderr  # the DDP wrapper was released before the process group
    _, single_err = single.communicate(timeout=400)
    assert single.returncode == 0, single_err[-3000:]

    run_one, adapter_one = _load(one)
    run_two, adapter_two = _load(two)
    assert run_one["world_size"] == 1 and run_two["world_size"] == 2
    assert run_one["global_step"] == run_two["global_step"] == 10
    for name in adapter_one:
        torch.testing.assert_close(adapter_two[name], adapter_one[name], rtol=1e-5, atol=1e-6, msg=name)
    correlations = [[round(e["eval_correlation"], 5) for e in run["evaluations"]] for run in (run_one, run_two)]
    assert correlations[0] == correlations[1]
    assert correlations[0][0] < 0 < correlations[0][-1]  # a sign flip happened, identically on both processes


if __name__ == "__main__":
    _run(sys.argv[1], int(sys.argv[2]), per_example="--per-example" in sys.argv)
