"""An interrupted run (SIGKILL after a checkpoint) resumed with resume_from_checkpoint ends with the same adapter as
an uninterrupted run.

This file is also the training script the test runs in subprocesses:
``python tests/test_training_resume.py OUT [--stall-at STEP] [--resume]``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_STEPS = 30
SAVE_STEPS = 15  # mid-epoch (10 row groups per epoch): resuming skips the first 5 groups of epoch 1


def _run(out_dir: str, stall_at: int = 0, resume: bool = False) -> None:
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    from transformers import TrainerCallback

    from gradiend_peft.training import GradiendTrainer
    from training_fixtures import arguments, pairs, peft_model, tokenizer

    class Stall(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stall_at:
                print("STALLED", flush=True)
                time.sleep(600)

    data = pairs("bert")
    args = arguments(out_dir, learning_rate=1e-4, max_steps=MAX_STEPS, eval_steps=5, save_strategy="steps",
                     save_steps=SAVE_STEPS, save_total_limit=None)
    trainer = GradiendTrainer(model=peft_model("bert"), args=args, train_dataset=data["train"],
                              eval_dataset=data["validation"], processing_class=tokenizer("bert"),
                              callbacks=[Stall()] if stall_at else None)
    trainer.train(resume_from_checkpoint=True if resume else None)
    from gradiend_peft import save_adapter

    save_adapter(trainer.model, os.path.join(out_dir, "final"), training_summary=trainer.training_summary)
    print("DONE", flush=True)


def _script(*arguments: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *arguments]


def _adapter(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "final", "adapter_model.safetensors"))


def test_resume_after_sigkill_ends_with_the_same_adapter(tmp_path):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    uninterrupted = subprocess.Popen(_script(whole), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
    victim = subprocess.Popen(_script(broken, "--stall-at", str(SAVE_STEPS + 3)), env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 240
        for line in victim.stdout:
            if "STALLED" in line or time.time() > deadline:
                break
        assert victim.poll() is None, "the run to interrupt ended early"
        assert os.path.isdir(os.path.join(broken, f"checkpoint-{SAVE_STEPS}"))
        assert not os.path.isdir(os.path.join(broken, f"checkpoint-{2 * SAVE_STEPS}"))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    # a checkpoint whose writing was cut short (adapter half written, no trainer_state.json) must not be resumed from
    partial = os.path.join(broken, f"checkpoint-{SAVE_STEPS + 3}")
    os.makedirs(partial)
    with open(os.path.join(broken, f"checkpoint-{SAVE_STEPS}", "adapter_model.safetensors"), "rb") as handle:
        head = handle.read(100)
    with open(os.path.join(partial, "adapter_model.safetensors"), "wb") as handle:
        handle.write(head)
    resumed = subprocess.run(_script(broken, "--resume"), env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not os.path.isdir(partial) and any(n.startswith(f"checkpoint-{SAVE_STEPS + 3}.incomplete") for n in os.listdir(broken))
    assert uninterrupted.wait(timeout=300) == 0

    expected, got = _adapter(whole), _adapter(broken)
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    summaries = [json.load(open(os.path.join(folder, "final", "gradiend_training_summary.json")))
                 for folder in (whole, broken)]
    for key in ("converged", "best_step", "global_step", "sign_flips"):
        assert summaries[0][key] == summaries[1][key], key
    assert summaries[0]["correlation"] == pytest.approx(summaries[1]["correlation"], abs=1e-6)
    histories = [json.load(open(os.path.join(folder, "gradiend_training_history.json"))) for folder in (whole, broken)]
    steps = [[e["step"] for e in h["evaluations"]] for h in histories]
    assert steps[0] == steps[1] == [0, 5, 10, 15, 20, 25, 30]


if __name__ == "__main__":
    stall = int(sys.argv[sys.argv.index("--stall-at") + 1]) if "--stall-at" in sys.argv else 0
    _run(sys.argv[1], stall_at=stall, resume="--resume" in sys.argv)
