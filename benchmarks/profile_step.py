"""Where a training step of ours spends its time and memory, phase by phase.

    python benchmarks/profile_step.py --model bert-tiny [--reps 5] [--work /tmp/gradiend-bench]
    PYTHONPATH=/tmp/gradiend-bench/patched/src python benchmarks/profile_step.py ...   # a patched copy (run.py
                                                                                     # --patches makes it)

One thread. The step is split as `GradiendModel.reconstruction_loss` runs it: the gradient pass
(`batch_gradients`: one forward, one backward per gradient kind), the adapter's forward (encoding and the summed
squared error over the target modules), the adapter's backward, and the AdamW step; beside it the plain forward +
backward of the base model on the same rows, and the Python overhead of walking the module tree
(`gradiend_layers()`, counted and timed). RSS is read after each phase, and the peak RSS within each phase (VmHWM
reset before it), in MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import worker_common as wc  # noqa: E402
import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert-tiny")
    parser.add_argument("--layers", type=int, default=None, help="layers of bert-base")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--work", default="/tmp/gradiend-bench")
    args = parser.parse_args()
    wc.fix_threads(1)
    import torch

    import gradiend_peft
    import ours_worker as ow
    from gradiend_peft.objective.gradients import batch_gradients
    from gradiend_peft.tuner.model import GradiendModel

    info = prepare.prepare(args.work, args.model, layers=args.layers)
    ow.setup(info["model_dir"], info["rows"], rows_per_gradient=args.rows)
    tuner, optimizer = ow.STATE["tuner"], ow.STATE["optimizer"]
    walks = {"calls": 0, "seconds": 0.0}
    original = GradiendModel.gradiend_layers

    def counted(self, adapter_name=None):
        start = time.perf_counter()
        try:
            return original(self, adapter_name)
        finally:
            walks["calls"] += 1
            walks["seconds"] += time.perf_counter() - start

    GradiendModel.gradiend_layers = counted
    name = "default"
    config = tuner.peft_config[name]
    phases: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}

    peaks: dict[str, list[float]] = {}

    def mark(key: str, seconds: float, peak: float | None = None) -> None:
        phases.setdefault(key, []).append(seconds)
        rss.setdefault(key, []).append(wc.rss_bytes() / 2**20)
        if peak is not None:
            peaks.setdefault(key, []).append(peak)

    def phase_peak() -> float:
        value = wc.peak_rss_bytes() / 2**20
        wc.reset_peak_rss()
        return value

    for rep in range(args.reps + 1):
        batch = ow._next_batch()
        walks.update(calls=0, seconds=0.0)
        wc.reset_peak_rss()
        t0 = time.perf_counter()
        grads = batch_gradients(tuner, batch, [config.source, config.target])
        t1 = time.perf_counter()
        p1 = phase_peak()
        tuner.calibrate_gradient_scale(grads[config.source], name)
        scale = tuner.gradient_scale(name)
        latent = tuner.encode_gradients(grads[config.source], name)
        layers = tuner.gradiend_layers(name)
        loss = sum(layer.reconstruction_error(name, latent, grads[config.target][m] * scale)
                   for m, layer in layers.items())
        del grads
        t2 = time.perf_counter()
        p2 = phase_peak()
        loss.backward()
        t3 = time.perf_counter()
        p3 = phase_peak()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        p4 = phase_peak()
        floor = ow.floor(1)["times"][0]
        if rep == 0:
            continue  # warm-up
        mark("gradient pass (1 forward, 2 backward)", t1 - t0, p1)
        mark("adapter forward (encode + squared error)", t2 - t1, p2)
        mark("adapter backward", t3 - t2, p3)
        mark("AdamW step over 3n + 1 parameters", t4 - t3, p4)
        mark("module-tree walks (inside the above)", walks["seconds"])
        phases.setdefault("walk calls per step", []).append(walks["calls"])
        mark("step total", t4 - t0)
        mark("plain forward + backward (same rows)", floor)
    n = sum(layer.num_entries(name) for layer in tuner.gradiend_layers().values())
    print(f"{info['tag']}: n = {n:,}, {args.rows} rows per gradient, {args.reps} steps, gradiend_peft from "
          f"{os.path.dirname(gradiend_peft.__file__)}")
    print("| phase | median (s) | share of the step | RSS after (MB) | peak RSS within (MB) |")
    print("|---|---|---|---|---|")
    total = statistics.median(phases["step total"])
    for key, values in phases.items():
        value = statistics.median(values)
        if key == "walk calls per step":
            print(f"| {key} | {value:.0f} | | | |")
            continue
        share = f"{100 * value / total:.0f}%" if "floor" not in key and "plain" not in key else "—"
        peak = f"{max(peaks[key]):,.0f}" if key in peaks else ""
        print(f"| {key} | {value:.4f} | {share} | {statistics.median(rss[key]):,.0f} | {peak} |")
    print(f"peak RSS {wc.peak_rss_bytes() / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()
