"""The rewrite search at the start of issue 15 against today's, side by side in one run, on SmolLM2-135M.

Workload: the three searches of the demo at that time (policies ``balance``, ``strengthen:F``, ``strengthen:M``
sharing their measurements; feature factors -1..1, rates 1-300, one refinement round) for one trained adapter of
blocks 20-29, on the same rows, neutral texts and control rows (prepared once here and written to a JSON file that
both versions read). The baseline is the package at ``--baseline`` (a git commit, checked out into a temporary
worktree); each version runs in its own subprocess with its own ``src`` first on ``PYTHONPATH``, one after the other,
``--repeats`` times, interleaved. Reports wall times, the ratio, and whether every policy chose the same rewrite.

    python benchmarks/search_speed.py --adapter gradiend-demo/adapter [--baseline f88d3f4] [--threads 2]

Writes ``benchmarks/results/search_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
POLICIES = ("balance", "strengthen:F", "strengthen:M")
GRID = {"lrs": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0], "feature_factors": [-1.0, -0.5, 0.0, 0.5, 1.0], "refine_rounds": 1}


def prepare_inputs(path: str) -> None:
    """The rows (64 mined test rows), neutral texts (48) and control rows (24) of the demo at the issue's start."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from gradiend_peft.data import Feature, load_corpus, mine_neutral, mine_pairs
    from gradiend_peft.bias.gender import context_controls, related_forms

    feature = Feature({"M": ["he"], "F": ["she"]})
    texts = load_corpus("english")
    pairs = mine_pairs(texts, feature, min_context_words=5, seed=0, progress=False)
    rows = [dict(r) for r in pairs["test"].shuffle(seed=0).select(range(64))]
    rows = [r for r in rows if r["factual"] in ("he", "she")]  # lower-case pronouns: single tokens for SmolLM2
    neutral = list(mine_neutral(texts, feature, exclude_words=related_forms(feature), max_rows=48, max_words=40,
                                seed=0)["text"])
    controls = [dict(r) for r in context_controls(feature, "search", count=24)]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, "neutral": neutral, "control": controls}, handle)


def worker(inputs_path: str, adapter: str, threads: int) -> dict:
    """Runs the three searches with whatever ``gradiend_peft`` is first on the path; returns times and choices."""
    import torch

    torch.set_num_threads(threads)
    import gradiend_peft
    from gradiend_peft.evaluation import search_rewrite
    from gradiend_peft.embedded_models import load_model_and_tokenizer

    with open(inputs_path, encoding="utf-8") as handle:
        inputs = json.load(handle)
    base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    model = gradiend_peft.load_gradiend_model(base, adapter)
    measurements: dict = {}
    started = time.perf_counter()
    chosen = {}
    for policy in POLICIES:
        result = search_rewrite(model, inputs["rows"], inputs["neutral"], tokenizer=tokenizer, policy=policy,
                                control=inputs["control"], measurements=measurements, progress=False, **GRID)
        chosen[policy] = None if result.best is None else [result.best.feature_factor, result.best.lr]
    return {"seconds": time.perf_counter() - started, "chosen": chosen,
            "candidates": len(measurements.get("candidates", {})), "source": os.path.dirname(gradiend_peft.__file__)}


def run_worker(src: str, inputs: str, adapter: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, __file__, "--worker", "--inputs", inputs, "--adapter", adapter,
                             "--threads", str(threads)], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker for {src} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default=os.path.join(ROOT, "gradiend-demo", "adapter"))
    parser.add_argument("--baseline", default="f88d3f4", help="git commit of the baseline (the issue's start)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.inputs, args.adapter, args.threads)))
        return
    with tempfile.TemporaryDirectory() as folder:
        inputs = os.path.join(folder, "inputs.json")
        prepare_inputs(inputs)
        baseline = os.path.join(folder, "baseline")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", baseline, args.baseline], check=True,
                       capture_output=True)
        try:
            runs = {"baseline": [], "today": []}
            for _ in range(args.repeats):
                runs["baseline"].append(run_worker(os.path.join(baseline, "src"), inputs, args.adapter, args.threads))
                runs["today"].append(run_worker(os.path.join(ROOT, "src"), inputs, args.adapter, args.threads))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", baseline], check=False,
                           capture_output=True)
    best = {name: min(r["seconds"] for r in results) for name, results in runs.items()}
    same = all(r["chosen"] == runs["baseline"][0]["chosen"] for r in runs["today"])
    summary = {"baseline_commit": args.baseline, "threads": args.threads, "seconds": best,
               "speedup": best["baseline"] / best["today"], "same_choices": same, "runs": runs}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "search_speed.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(f"three searches: baseline {best['baseline']:.1f} s, today {best['today']:.1f} s, "
          f"{summary['speedup']:.2f}x; same choices: {same}")


if __name__ == "__main__":
    main()
