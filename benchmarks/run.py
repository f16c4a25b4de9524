"""GRADIEND benchmarks: gradiend_peft side by side with the reference implementation ``gradiend==0.2.3``.

    bash benchmarks/setup_reference.sh              # once: the reference in benchmarks/.ref-venv
    python benchmarks/run.py                        # main table: tiny BERT, tiny GPT-2, tiny Llama
    python benchmarks/run.py --quick                # the same, fewer repetitions and rows (a few minutes)
    python benchmarks/run.py --models bert-base --quick --base-layers 12   # bert-base size, its own run
    python benchmarks/run.py --suite scaling        # step time / peak memory vs model size and rows per gradient
    python benchmarks/run.py --ours-src PATH        # measure a patched copy of our source tree too (PATH/src)

Both implementations get the same model weights (built from a config and saved with ``save_pretrained``), the same
tokenizer and the same mined rows (`prepare.py`). Each runs in its own process with one thread
(``torch.set_num_threads(1)`` and the OMP/MKL variables); the reference runs in its own virtual environment. The
orchestrator interleaves the measurements (ours, reference, ours, reference, ...), takes medians and prints the
ratio ours/reference, and writes everything to ``benchmarks/results/<suite>-<models>.json``.

What is measured (see docs/benchmarks.md for the definitions and caveats):

- one training step: ``rows_per_gradient`` rows (default 32) give one GRADIEND sample over every weight matrix of
  the backbone (both sides use the same parameters, so ``n`` is identical), fp32, AdamW; steps/s over the run;
- the plain forward + backward of the base model on the same row group (the floor), and the step as a multiple;
- peak resident memory of a training run (a fresh process per implementation: load, set up, a few steps);
- encoding 1,000 rows per row (the encoder evaluation);
- the full default rewrite search: both feature factors x 16 learning rates + the base model, with probabilities
  at the slot and the LMS on neutral text;
- adapter size on disk, unpruned and post-pruned to the top 1% of entries;
- the |Pearson r| of the encodings of the test rows with the labels after the same number of steps, same seeds.

No timing is asserted anywhere: the numbers are printed and saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import prepare  # noqa: E402

REF_PYTHON = os.path.join(HERE, ".ref-venv", "bin", "python")
MB = 1024 * 1024


class WorkerError(RuntimeError):
    pass


class Worker:
    """One benchmark worker process (see worker_common.py for the protocol)."""

    def __init__(self, name: str, python: str, script: str, threads: int, log_dir: str,
                 pythonpath: Optional[str] = None) -> None:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_VERBOSITY"] = "error"
        if pythonpath:  # before anything else: a patched copy of our source shadows the installed one
            env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [python, os.path.join(HERE, script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env=env, cwd=ROOT,
        )

    def call(self, op: str, **kwargs: Any) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.name} worker died during {op!r}; see {self.log_path}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise WorkerError(f"{self.name} worker failed in {op!r}: {answer.get('error')} (log: {self.log_path})")
        return answer

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("exit")
        except (WorkerError, BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def pearson(values: list[float], labels: list[float]) -> float:
    n = len(values)
    mx, my = sum(values) / n, sum(labels) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(values, labels))
    sxx = sum((x - mx) ** 2 for x in values)
    syy = sum((y - my) ** 2 for y in labels)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def correlation(result: dict) -> dict:
    labels = [1.0 if c == "M" else -1.0 for c in result["classes"]]
    r = pearson(result["values"], labels)
    means = {cls: statistics.mean(v for v, c in zip(result["values"], result["classes"]) if c == cls)
             for cls in ("M", "F")}
    return {"abs_r": abs(r), "r": r, "means": means}


# ------------------------------------------------------------------------------------------------------ settings
LARGE = {"bert-small", "bert-base"}


def settings(args: argparse.Namespace, name: str) -> dict:
    """Repetitions and row counts: fewer for --quick and for the large models (a reference step of bert-base
    size takes minutes on one CPU thread, because it pads every row to 256 tokens)."""
    quick, large = args.quick, name in LARGE
    cfg = {
        "step_reps": 3 if quick else 5,
        "ref_step_reps": 2 if quick else 3,
        "warmup": not large or args.device != "cpu",
        "encode_rows": 1000,
        "encode_reps": 1,
        "ref_encode_rows": 50 if quick else 100,
        "search_prob_rows": 8 if quick else 16,  # per class
        "search_lms_rows": 16 if quick else 32,
        "trainer_steps": 5 if quick else 10,
        "corr_steps": 10 if quick else 20,
        "corr_seeds": [0] if quick else [0, 1],
    }
    if large:
        cfg.update(step_reps=2 if quick else 3, ref_step_reps=1 if quick else 2, ref_encode_rows=10 if quick else 20,
                   search_prob_rows=4 if quick else 8, search_lms_rows=8 if quick else 16, trainer_steps=0,
                   encode_rows=200 if quick else 1000)
    for key in ("step_reps", "ref_step_reps", "ref_encode_rows", "search_prob_rows", "search_lms_rows", "corr_steps",
                "trainer_steps"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    return cfg


def patched_tree(patches: list[str], work: str) -> str:
    """A copy of our src/ with ``patches`` applied (git apply), for measuring proposed core changes side by side."""
    import shutil

    target = os.path.join(work, "patched")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "src"), os.path.join(target, "src"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for patch in patches:
        subprocess.run(["git", "apply", os.path.abspath(patch)], cwd=target, check=True)
    return target


# ------------------------------------------------------------------------------------------------- main suite
def run_model(name: str, args: argparse.Namespace, log_dir: str) -> dict:
    cfg = settings(args, name)
    layers = args.base_layers if name == "bert-base" else None
    info = prepare.prepare(args.work, name, layers=layers)
    out: dict[str, Any] = {"model": info["tag"], "objective": info["objective"], "rows_per_gradient": args.rows,
                           "settings": cfg}
    have_ref = os.path.exists(REF_PYTHON) and not args.no_reference
    variants = [("ours", sys.executable, "ours_worker.py", None)]
    if args.ours_src:
        variants.append(("ours+patch", sys.executable, "ours_worker.py", os.path.join(args.ours_src, "src")))
    if have_ref:
        variants.append(("reference", REF_PYTHON, "ref_worker.py", None))
    ours_like = [v[0] for v in variants if v[0] != "reference"]

    common = {"model_dir": info["model_dir"], "rows": info["rows"], "rows_per_gradient": args.rows,
              "threads": args.threads, "device": args.device, "dtype": args.dtype}
    out["device"], out["dtype"] = args.device, args.dtype
    workers: dict[str, Worker] = {}
    try:
        setup: dict[str, dict] = {}
        params = None
        for label, python, script, path in variants:
            worker = workers[label] = Worker(f"{info['tag']}-{label}", python, script, args.threads, log_dir,
                                             pythonpath=path)
            extra = {"params": params} if label == "reference" else {}
            setup[label] = worker.call("setup", **common, **extra)
            if label == "ours":
                params = setup[label]["params"]
            setup[label].pop("params", None)
        out["n"] = {k: v["n"] for k, v in setup.items()}
        out["tokens_per_row_group"] = setup["ours"]["tokens"]
        out["rss_after_setup_mb"] = {k: v["rss"] / MB for k, v in setup.items()}
        log(f"[{info['tag']}] n = {out['n']}")

        # --- training steps, interleaved A B A B; the plain forward+backward beside ours; peak RSS from here on
        for worker in workers.values():
            worker.call("reset_peak")
        times: dict[str, list[float]] = {k: [] for k in workers}
        floors: list[float] = []
        if cfg["warmup"]:
            for worker in workers.values():
                worker.call("step", count=1)
        peaks: dict[str, float] = {}
        for i in range(max(cfg["step_reps"], cfg["ref_step_reps"])):
            for label, worker in workers.items():
                reps = cfg["ref_step_reps"] if label == "reference" else cfg["step_reps"]
                if i < reps:
                    result = worker.call("step", count=1)
                    times[label] += result["times"]
                    peaks[label] = result["peak"] / MB
                    if result.get("gpu_peak"):
                        out.setdefault("gpu_peak_mb", {})[label] = result["gpu_peak"] / MB
        # the plain forward+backward afterwards (its full logits and all-parameter gradients would count in the
        # peak otherwise), as many repetitions as ours had steps
        for i in range(cfg["step_reps"] + (1 if cfg["warmup"] else 0)):
            result = workers["ours"].call("floor", count=1)["times"]
            if i or not cfg["warmup"]:
                floors += result
        out["step_s"] = {k: median(v) for k, v in times.items()}
        out["step_times"] = times
        out["floor_s"] = median(floors)
        out["floor_times"] = floors
        out["peak_rss_mb"] = peaks  # steady training: model, adapter, optimiser state, gradients, activations
        log(f"[{info['tag']}] step {fmt_map(out['step_s'])}; floor {out['floor_s']:.3f}s; "
            f"peak {fmt_map(peaks, '{:.0f}MB')}")

        # --- steps per second over a short run: ours through GradiendTrainer, the reference through its loop body
        if cfg["trainer_steps"]:
            run: dict[str, float] = {}
            for label in ours_like:
                result = workers[label].call("trainer_run", steps=cfg["trainer_steps"])
                run[label] = result["steps"] / result["wall_s"]
                out.setdefault("trainer_step_s", {})[label] = median(result["times"])
            if "reference" in workers:
                result = workers["reference"].call("step", count=max(2, cfg["ref_step_reps"]))
                run["reference"] = len(result["times"]) / sum(result["times"])
            out["steps_per_s"] = run

        # --- encoding rows (the reference on a subset, scaled: its per-row work is independent of the others)
        enc: dict[str, float] = {}
        enc_rows: dict[str, int] = {}
        for label, worker in workers.items():
            if label == "reference":
                result = worker.call("encode", rows=cfg["encode_rows"], limit=cfg["ref_encode_rows"])
            else:
                result = worker.call("encode", rows=cfg["encode_rows"])
            enc[label] = result["seconds"] * 1000 / result["rows"]
            enc_rows[label] = result["rows"]
        out["encode_1000_s"] = enc
        out["encode_rows_measured"] = enc_rows
        log(f"[{info['tag']}] encode 1000 rows {fmt_map(enc)} (measured on {enc_rows})")

        # --- the full default rewrite search (2 feature factors x 16 learning rates + base), no refinement
        if not args.skip_search:
            search: dict[str, dict] = {}
            for label, worker in workers.items():
                kwargs = {} if label == "reference" else {"apply": args.search_apply}
                search[label] = worker.call("search", prob_rows=cfg["search_prob_rows"],
                                            lms_rows=cfg["search_lms_rows"], **kwargs)
            out["search_s"] = {k: v["seconds"] for k, v in search.items()}
            out["search_peak_increase_mb"] = {k: (v["peak"] - v["start_rss"]) / MB for k, v in search.items()}
            out["search_candidates"] = {k: v["candidates"] for k, v in search.items()}
            out["search_rows"] = {k: [v.get("prob_rows"), v.get("lms_rows")] for k, v in search.items()}
            log(f"[{info['tag']}] search {fmt_map(out['search_s'])} rows {out['search_rows']}")

        # --- adapter size on disk
        sizes = {label: worker.call("save") for label, worker in workers.items()}
        out["disk_mb"] = {k: v["unpruned_bytes"] / MB for k, v in sizes.items()}
        out["disk_pruned_mb"] = {k: v["pruned_bytes"] / MB for k, v in sizes.items()}

        # --- correlation on the same rows and seeds
        if args.correlation or (args.correlation is None and name in args.corr_models):
            corr: dict[str, list[dict]] = {k: [] for k in workers}
            for seed in cfg["corr_seeds"]:
                for label, worker in workers.items():
                    corr[label].append(correlation(worker.call("train", steps=cfg["corr_steps"], seed=seed)))
            out["correlation"] = {k: {"abs_r": [c["abs_r"] for c in v], "best": max(c["abs_r"] for c in v),
                                      "means": [c["means"] for c in v]} for k, v in corr.items()}
            out["correlation_steps"] = cfg["corr_steps"]
            out["correlation_seeds"] = cfg["corr_seeds"]
            log(f"[{info['tag']}] |r| {fmt_map({k: v['best'] for k, v in out['correlation'].items()}, '{:.3f}')}")
    finally:
        for worker in workers.values():
            worker.close()
    return out


# ---------------------------------------------------------------------------------------------- scaling suite
def run_scaling(args: argparse.Namespace, log_dir: str) -> list[dict]:
    have_ref = os.path.exists(REF_PYTHON) and not args.no_reference
    results = []
    for name in args.scaling_models:
        layers = args.base_layers if name == "bert-base" else None
        info = prepare.prepare(args.work, name, layers=layers)
        for label, python, script in [("ours", sys.executable, "ours_worker.py")] + (
            [("reference", REF_PYTHON, "ref_worker.py")] if have_ref else []
        ):
            worker = Worker(f"scaling-{info['tag']}-{label}", python, script, args.threads, log_dir)
            try:
                common = {"model_dir": info["model_dir"], "rows": info["rows"], "rows_per_gradient": 8,
                          "threads": args.threads}
                if label == "reference":
                    common["params"] = params
                setup = worker.call("setup", **common)
                if label == "ours":
                    params = setup["params"]
                for rows in args.scaling_rows:
                    if label == "reference" and args.scaling_ref_max_rows and rows > args.scaling_ref_max_rows:
                        log(f"[scaling] {info['tag']} reference rows={rows}: skipped (--scaling-ref-max-rows)")
                        continue
                    worker.call("set_rows", rows_per_gradient=rows)
                    worker.call("step", count=1)  # warm-up (and the new shapes)
                    worker.call("reset_peak")
                    reps = args.scaling_reps if label == "ours" else args.scaling_ref_reps
                    step = worker.call("step", count=reps)
                    results.append({"model": info["tag"], "impl": label, "rows": rows, "n": setup["n"],
                                    "step_s": median(step["times"]), "times": step["times"],
                                    "peak_mb": step["peak"] / MB})
                    log(f"[scaling] {info['tag']} {label} rows={rows} step {median(step['times']):.3f}s "
                        f"peak {step['peak'] / MB:.0f}MB")
            finally:
                worker.close()
    return results


# ----------------------------------------------------------------------------------------------- memory suite
def run_memory(args: argparse.Namespace, log_dir: str) -> list[dict]:
    """Peak RSS while training, each variant in a fresh process, one after the other (memory is not disturbed by
    other load, so this suite may run beside other work): ours, ours+patch, ours+patch with the optimiser step
    inside backward, the reference."""
    have_ref = os.path.exists(REF_PYTHON) and not args.no_reference
    rows = []
    for name in args.models.split(","):
        layers = args.base_layers if name == "bert-base" else None
        info = prepare.prepare(args.work, name, layers=layers)
        variants = [("ours", sys.executable, "ours_worker.py", None, {}),
                    ("ours, step in backward", sys.executable, "ours_worker.py", None, {"step_in_backward": True})]
        if args.ours_src:
            patched = os.path.join(args.ours_src, "src")
            variants += [("ours+patch", sys.executable, "ours_worker.py", patched, {}),
                         ("ours+patch, step in backward", sys.executable, "ours_worker.py", patched,
                          {"step_in_backward": True})]
        if have_ref:
            variants.append(("reference", REF_PYTHON, "ref_worker.py", None, {}))
        params = None
        for label, python, script, path, extra in variants:
            worker = Worker(f"memory-{info['tag']}-{label.replace(' ', '_').replace(',', '')}", python, script,
                            args.threads, log_dir, pythonpath=path)
            try:
                common = {"model_dir": info["model_dir"], "rows": info["rows"], "rows_per_gradient": args.rows,
                          "threads": args.threads, **extra}
                if label == "reference":
                    common["params"] = params
                setup = worker.call("setup", **common)
                if params is None:
                    params = setup.get("params")
                worker.call("reset_peak")
                if args.memory_op == "search":  # the rewrite search on a fresh process: model + adapter + ?
                    if "step in backward" in label:
                        continue
                    kwargs = {} if label == "reference" else {"apply": args.search_apply}
                    step = worker.call("search", prob_rows=args.search_prob_rows or 16,
                                       lms_rows=args.search_lms_rows or 32, **kwargs)
                    step["times"] = [step["seconds"]]
                else:
                    step = worker.call("step", count=args.memory_steps)
                rows.append({"model": info["tag"], "impl": label, "n": setup["n"], "rss_after_setup_mb":
                             setup["rss"] / MB, "peak_mb": step["peak"] / MB, "step_s": median(step["times"]),
                             "op": args.memory_op})
                log(f"[memory] {info['tag']} {label}: after setup {setup['rss'] / MB:,.0f} MB, peak while training "
                    f"{step['peak'] / MB:,.0f} MB")
            finally:
                worker.close()
    return rows


def memory_table(rows: list[dict]) -> str:
    what = "the rewrite search" if rows and rows[0].get("op") == "search" else "training"
    lines = [f"| model | variant | n | RSS after setup (MB) | peak RSS during {what} (MB) | peak / after setup | "
             "peak / reference's |", "|---|---|---|---|---|---|---|"]
    refs = {r["model"]: r["peak_mb"] for r in rows if r["impl"] == "reference"}
    for r in rows:
        lines.append(f"| {r['model']} | {r['impl']} | {r['n']:,} | {r['rss_after_setup_mb']:,.0f} | "
                     f"{r['peak_mb']:,.0f} | {fmt(ratio(r['peak_mb'], r['rss_after_setup_mb']))} | "
                     f"{fmt(ratio(r['peak_mb'], refs.get(r['model'])))} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- printing
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_map(values: dict, pattern: str = "{:.3f}s") -> str:
    return ", ".join(f"{k} {pattern.format(v)}" if v is not None else f"{k} -" for k, v in values.items())


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if value < 1 else f"{value:.{digits}g}"
    return str(value)


def table(results: list[dict], impls: list[str]) -> str:
    """One markdown table per model: metric | each implementation | ours/reference."""
    blocks = []
    for r in results:
        lines = [f"### {r['model']} ({r['objective']}, {r.get('device', 'cpu')} {r.get('dtype', 'float32')}, "
                 f"n = {r['n'].get('ours'):,} entries, "
                 f"{r['rows_per_gradient']} rows per gradient, row groups of {min(r['tokens_per_row_group'])}-"
                 f"{max(r['tokens_per_row_group'])} tokens)", ""]
        mine = [i for i in impls if i != "reference"]
        header = "| metric | " + " | ".join(impls) + " | " + " | ".join(f"{i} / reference" for i in mine) + " |"
        lines += [header, "|" + "---|" * (len(impls) + len(mine) + 1)]

        def row(label: str, values: dict, unit: str = "", digits: int = 3) -> None:
            cells = [fmt(values.get(i), digits) + (unit if values.get(i) is not None else "") for i in impls]
            qs = [ratio(values.get(i), values.get("reference")) for i in mine]
            lines.append(f"| {label} | " + " | ".join(cells) + " | "
                         + " | ".join(f"{fmt(q, 3)}x" if q is not None else "—" for q in qs) + " |")

        row("training step (median, s)", r["step_s"])
        if "steps_per_s" in r:
            row("steps/s, short run (ours: GradiendTrainer; reference: its loop body)", r["steps_per_s"])
        floor = r.get("floor_s")
        row("plain forward+backward, same rows (s)", {i: floor for i in impls if i != "reference"} | {"reference": None})
        row("step / plain forward+backward", {i: ratio(r["step_s"].get(i), floor) for i in impls})
        row("peak RSS while training (MB)", r.get("peak_rss_mb", {}), digits=4)
        if r.get("gpu_peak_mb"):
            row("peak GPU memory while training (MB)", r["gpu_peak_mb"], digits=4)
        row("encode 1,000 rows (s)", r["encode_1000_s"])
        if "search_s" in r:
            row(f"rewrite search, {r['search_candidates'].get('ours', 32)} candidates + base (s)", r["search_s"])
            row("search: peak RSS above its start (MB)", r["search_peak_increase_mb"])
        row("adapter on disk, unpruned (MB)", r["disk_mb"])
        row("adapter on disk, pruned to 1% (MB)", r["disk_pruned_mb"])
        if "correlation" in r:
            corr = {k: v["best"] for k, v in r["correlation"].items()}
            cells = [fmt(corr.get(i)) for i in impls]
            diffs = [None if "reference" not in corr else corr[i] - corr["reference"] for i in mine]
            lines.append(f"| best \\|r\\| on test rows after {r['correlation_steps']} steps, seeds "
                         f"{r['correlation_seeds']} | " + " | ".join(cells) + " | "
                         + " | ".join("—" if d is None else f"{d:+.3f} (difference)" for d in diffs) + " |")
        lines.append("| per-example training samples | " + " | ".join(
            "no (one gradient per row group)" if i == "reference" else "yes (one-backward engine)" for i in impls)
            + " | " + " | ".join("—" for _ in mine) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def scaling_table(rows: list[dict]) -> str:
    lines = ["| model | n | rows per gradient | ours step (s) | reference step (s) | ours/ref | ours peak (MB) | "
             "reference peak (MB) | ours/ref |", "|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["model"], r["impl"], r["rows"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for n_rows in sorted({r["rows"] for r in rows if r["model"] == model}):
            o, f = keyed.get((model, "ours", n_rows)), keyed.get((model, "reference", n_rows))
            ref_step = f["step_s"] if f else None
            ref_peak = f["peak_mb"] if f else None
            lines.append(
                f"| {model} | {o['n']:,} | {n_rows} | {fmt(o['step_s'])} | {fmt(ref_step)} | "
                f"{fmt(ratio(o['step_s'], ref_step))} | {o['peak_mb']:,.0f} | "
                f"{'—' if ref_peak is None else f'{ref_peak:,.0f}'} | {fmt(ratio(o['peak_mb'], ref_peak))} |"
            )
    return "\n".join(lines)


def plot_scaling(rows: list[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for impl, style in (("ours", "-o"), ("reference", "--s")):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["rows"], r["step_s"], r["peak_mb"]) for r in rows if r["model"] == model and r["impl"] == impl)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0].plot(xs, [p[1] for p in pts], style, label=f"{impl} {model}")
            axes[1].plot(xs, [p[2] for p in pts], style, label=f"{impl} {model}")
    for ax, title in zip(axes, ("training step (s)", "peak RSS during steps (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rows per gradient")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["main", "scaling", "memory"], default="main")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of the memory suite")
    parser.add_argument("--memory-op", choices=["train", "search"], default="train",
                        help="what the memory suite measures: training steps or the rewrite search")
    parser.add_argument("--models", default="bert-tiny,gpt2-tiny,llama-tiny",
                        help=f"comma-separated, from {sorted(prepare.MODEL_SPECS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the reference picks CUDA itself when present)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="base model dtype (ours keeps the adapter in float32; the reference casts all)")
    parser.add_argument("--rows", type=int, default=32, help="rows per gradient (main suite)")
    parser.add_argument("--base-layers", type=int, default=None, help="layers of bert-base (default 12)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "gradiend-bench"),
                        help="where models, tokenizers and rows are written (reused)")
    parser.add_argument("--ours-src", default=None, help="also measure the source tree at this path (PATH/src)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--correlation", action=argparse.BooleanOptionalAction, default=None,
                        help="train and compare correlations (default: only for --corr-models)")
    parser.add_argument("--corr-models", default="gpt2-tiny,llama-tiny")
    parser.add_argument("--step-reps", dest="step_reps", type=int)
    parser.add_argument("--ref-step-reps", dest="ref_step_reps", type=int)
    parser.add_argument("--ref-encode-rows", dest="ref_encode_rows", type=int,
                        help="rows the reference encodes (scaled to 1,000)")
    parser.add_argument("--search-rows", dest="search_prob_rows", type=int,
                        help="probability rows per class in the rewrite search")
    parser.add_argument("--search-lms", dest="search_lms_rows", type=int, help="neutral texts for the LMS")
    parser.add_argument("--search-apply", default="steer", choices=["steer", "merge"],
                        help="how our search applies a candidate")
    parser.add_argument("--trainer-steps", dest="trainer_steps", type=int,
                        help="steps of the short GradiendTrainer run (steps/s)")
    parser.add_argument("--corr-steps", dest="corr_steps", type=int)
    parser.add_argument("--patches", nargs="*", default=None,
                        help="measure our source tree with these patch files applied as 'ours+patch' "
                             "(default with the flag alone: benchmarks/patches/*.patch)")
    parser.add_argument("--scaling-models", default="bert-tiny,bert-small,bert-base")
    parser.add_argument("--scaling-rows", default="8,32,128")
    parser.add_argument("--scaling-reps", type=int, default=3)
    parser.add_argument("--scaling-ref-reps", type=int, default=1)
    parser.add_argument("--scaling-ref-max-rows", type=int, default=None,
                        help="skip larger row counts for the reference (it pads every row to 256 tokens: at bert-base "
                             "size and 128 rows it needs more memory than a 24 GB machine has)")
    parser.add_argument("--out", default=None, help="JSON results file (default benchmarks/results/...)")
    args = parser.parse_args()
    args.corr_models = args.corr_models.split(",")
    if args.patches is not None:
        import glob

        patches = args.patches or sorted(glob.glob(os.path.join(HERE, "patches", "*.patch")))
        args.ours_src = patched_tree(patches, args.work)
        args.patch_files = [os.path.relpath(p, ROOT) for p in patches]
    args.scaling_models = args.scaling_models.split(",")
    args.scaling_rows = [int(x) for x in args.scaling_rows.split(",")]
    os.makedirs(args.work, exist_ok=True)
    if not os.path.exists(REF_PYTHON) and not args.no_reference:
        log(f"The reference is not set up ({REF_PYTHON} missing): run `bash benchmarks/setup_reference.sh`. "
            "Measuring ours only.")
    log_dir = os.path.join(args.work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    started = time.time()
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    header = {"command": command.strip(), "machine": machine(), "threads": args.threads,
              "patches": getattr(args, "patch_files", None),
              "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_start": os.getloadavg()}
    results_dir = os.path.join(HERE, "results")
    os.makedirs(results_dir, exist_ok=True)
    if args.suite == "main":
        results = [run_model(name, args, log_dir) for name in args.models.split(",")]
        impls = ["ours"] + (["ours+patch"] if args.ours_src else []) + (
            ["reference"] if os.path.exists(REF_PYTHON) and not args.no_reference else [])
        text = table(results, impls)
        payload = {**header, "results": results}
        tag = f"-L{args.base_layers}" if args.base_layers and "bert-base" in args.models else ""
        default_out = (f"main-{'-'.join(args.models.split(','))}{tag}{'-quick' if args.quick else ''}"
                       f"{'-patched' if args.ours_src else ''}{'-' + args.device if args.device != 'cpu' else ''}.json")
    elif args.suite == "memory":
        rows = run_memory(args, log_dir)
        text = memory_table(rows)
        payload = {**header, "results": rows}
        default_out = (f"memory-{'search-' if args.memory_op == 'search' else ''}{'-'.join(args.models.split(','))}"
                       f"{'-L' + str(args.base_layers) if args.base_layers else ''}.json")
    else:
        rows = run_scaling(args, log_dir)
        text = scaling_table(rows)
        stem = os.path.splitext(os.path.basename(args.out))[0] if args.out else "scaling"
        plot = plot_scaling(rows, os.path.join(results_dir, f"{stem}.png"))
        if plot:
            text += f"\n\nPlot: {os.path.relpath(plot, ROOT)}"
        payload = {**header, "results": rows}
        default_out = "scaling.json"
    payload["wall_s"] = time.time() - started
    payload["load_average_at_end"] = os.getloadavg()
    out = args.out or os.path.join(results_dir, default_out)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
    print(f"Command: {header['command']}\nMachine: {header['machine']}; {args.threads} thread(s) per program; "
          f"load average at start {header['load_average_at_start'][0]:.1f}, at end "
          f"{payload['load_average_at_end'][0]:.1f}; wall time {payload['wall_s'] / 60:.1f} min\n")
    print(text)
    print(f"\nResults: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
