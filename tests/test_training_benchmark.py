"""Time per training step, peak memory and the correlation reached on tiny BERT and tiny Llama, 32 rows per gradient,
default arguments (learning rate 1e-5).

Run ``python tests/test_training_benchmark.py bert`` (or ``llama``) in a fresh process for the numbers: the peak RSS
is the process's. The slow test checks the same runs reach a held-out correlation of 0.9.
"""

import os
import resource
import statistics
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = {"bert": 15, "llama": 40}


def benchmark(family: str, output_dir: str, threads: int = 1) -> dict:
    sys.path.insert(0, HERE)
    torch.set_num_threads(threads)
    from transformers import TrainerCallback

    from gradiend_peft.training import GradiendTrainer
    from training_fixtures import arguments, pairs, peft_model, tokenizer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    data = pairs(family)
    timer = StepTimer()
    model = peft_model(family)
    args = arguments(output_dir, rows_per_gradient=32, num_train_epochs=EPOCHS[family], eval_steps=10_000)
    trainer = GradiendTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                              processing_class=tokenizer(family), callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    return {
        "family": family,
        "entries_n": trainer._num_entries,
        "steps": trainer.state.global_step,
        "median_step_s": statistics.median(timer.times),
        "train_wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "validation_correlation": trainer.training_summary["correlation"],
        "class_means": trainer.training_summary["class_means"],
        "test_correlation": test["test_correlation"],
        "converged": trainer.training_summary["converged"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_default_arguments_reach_high_correlation_with_32_rows(tmp_path, family):
    result = benchmark(family, str(tmp_path))
    assert result["validation_correlation"] >= 0.9 and result["test_correlation"] >= 0.9, result


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(benchmark(sys.argv[1], folder), indent=2))
