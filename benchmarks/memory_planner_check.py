"""The memory planner (`gradiend_peft.planning.estimate_memory`) against measured peaks.

    python benchmarks/memory_planner_check.py [--cases tiny,smollm2-20-29,...] [--out benchmarks/results/memory_planner.json]

Every (case, phase) runs in a fresh subprocess, measured as ``benchmarks/memory_smollm2.py`` measures: one torch
thread; every library the phase uses imported first; ``gc.collect()`` and ``malloc_trim(0)``; the baseline is the RSS
then; the kernel's high-water mark (``VmHWM``) is reset (``/proc/self/clear_refs``) and read at the end. The measured
peak is ``VmHWM - baseline``: model loading, the adapter, the data and the phase itself. Phases:

- ``training``: `GradiendTrainer` for 3 optimizer steps (AdamW's moments exist from the second), no evaluation, no
  checkpoints, ``rows_per_gradient`` rows of about ``seq_len`` tokens per group;
- ``encoding``: `encode_rows` on ``rows_per_gradient`` rows (one forward and one backward pass);
- ``search``: `search_rewrite` (steering, ``cache=True``), feature factors ``+-1``, learning rates ``1, 10``, no
  refinement, on 64 rows and 48 neutral texts.

The planner gets the same model (its config), targets, dtypes, rows and the padded length the collator produced, and
plans the peak of one process. bfloat16 cases load a bfloat16 copy of the model saved once (`prepare`); ``setup_peak``
records the high-water mark after loading, before the phase. The table lists planned, measured and the error ``(planned - measured) / measured``.
SmolLM2-135M loads from its cached conversion (``gradiend_peft.embedded_models``); the tiny models are ``tests/tiny.py``'s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from proc_memory import proc_status, trim  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 1024 * 1024

CASES: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model": "tiny:llama", "layers": None, "rows": 8, "words": 14},
    "tiny-gpt2": {"model": "tiny:gpt2", "layers": None, "rows": 8, "words": 14},
    "tiny-bert": {"model": "tiny:bert", "layers": None, "rows": 8, "words": 14},
    "smollm2-20-29": {"model": "smollm2-135m", "layers": "20-29", "rows": 16, "words": 40},
    "smollm2-all": {"model": "smollm2-135m", "layers": None, "rows": 16, "words": 40},
    "smollm2-20-29-bf16": {"model": "smollm2-135m", "layers": "20-29", "rows": 16, "words": 40, "dtype": "bfloat16"},
    "smollm2-20-29-bf16-adapter": {"model": "smollm2-135m", "layers": "20-29", "rows": 16, "words": 40,
                                   "dtype": "bfloat16", "autocast_adapter_dtype": False},
    "smollm2-20-29-long": {"model": "smollm2-135m", "layers": "20-29", "rows": 8, "words": 200},
}
GROUPS = {"tiny": ["tiny-llama", "tiny-gpt2", "tiny-bert"], "smollm2": ["smollm2-20-29", "smollm2-all"],
          "bf16": ["smollm2-20-29-bf16", "smollm2-20-29-bf16-adapter"], "long": ["smollm2-20-29-long"]}
PHASES = ("training", "encoding", "search")
SEARCH_ROWS, SEARCH_TEXTS = 64, 48
FILLER = ("the old man went home with a small dog and then the woman said that the city was very big and the "
          "children ran to the store where the day was new and the book was good").split()


# ------------------------------------------------------------------------------------------------- the worker
def _rows(words: int, count: int, objective: str) -> list[dict[str, Any]]:
    """Rows of ``words`` filler words before the slot (masked LM: and a few after), alternating he/she."""
    rows = []
    for i in range(count):
        context = " ".join(FILLER[(i + j) % len(FILLER)] for j in range(words))
        pronoun, other = ("he", "she") if i % 2 == 0 else ("she", "he")
        text = f"{context} [MASK] came home ." if objective == "masked_lm" else f"{context} [MASK] came home ."
        rows.append({"text": text, "factual": pronoun, "alternative": other, "factual_class": "M" if i % 2 == 0 else "F",
                     "alternative_class": "F" if i % 2 == 0 else "M", "label": 1.0 if i % 2 == 0 else -1.0})
    return rows


def _load(case: dict[str, Any]):
    import torch

    dtype = getattr(torch, case.get("dtype", "float32"))
    if case["model"].startswith("tiny:"):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tiny import MODEL_BUILDERS, TOKENIZER_KIND, word_tokenizer

        family = case["model"].split(":", 1)[1]
        return MODEL_BUILDERS[family]().to(dtype), word_tokenizer(TOKENIZER_KIND[family])
    from gradiend_peft.embedded_models import load_model_and_tokenizer

    return load_model_and_tokenizer(case.get("folder", case["model"]), dtype=dtype)


def prepare(case: dict[str, Any], create: bool = False) -> dict[str, Any]:
    """A bfloat16 case of an embedded model loads from a bfloat16 copy saved once (in /tmp), as a bfloat16 checkpoint
    would load: converting the float32 cache while loading would hold both copies at once, a loading peak the plan
    does not describe."""
    if case.get("dtype", "float32") == "float32" or case["model"].startswith("tiny:"):
        return case
    folder = os.path.join("/tmp", f"memory_planner_{case['model']}_{case['dtype']}")
    if create and not os.path.isdir(folder):  # in a process of its own (`main`), never in a measured one
        base, tokenizer = _load(case)
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return {**case, "folder": folder}


def _targets(base, layers):
    if not layers:
        return None
    from gradiend_peft.cli.steps import layer_targets, parse_layers

    return layer_targets(base, parse_layers(layers))


def worker(case: dict[str, Any], phase: str) -> dict[str, Any]:
    import datasets  # noqa: F401  (imported before the baseline, as every library the phase uses)
    import torch
    import transformers.trainer  # noqa: F401
    from peft import get_peft_model

    import gradiend_peft
    from gradiend_peft.data.collators import collator_for
    from gradiend_peft.evaluation import search_rewrite
    from gradiend_peft.objective import encode_rows
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    torch.set_num_threads(1)
    trim()
    baseline = proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    started = time.perf_counter()
    base, tokenizer = _load(case)
    config = gradiend_peft.GradiendConfig(target_modules=_targets(base, case["layers"]), init_seed=0)
    model = get_peft_model(base, config, autocast_adapter_dtype=case.get("autocast_adapter_dtype", True))
    tuner = model.base_model
    objective = model.peft_config["default"].objective
    rows = _rows(case["words"], max(case["rows"] * 4, SEARCH_ROWS), objective)
    collator = collator_for(tokenizer, objective)
    seq_len = int(collator(rows[: case["rows"]])["input_ids"].shape[1])
    trim()
    setup_peak = proc_status("VmHWM") - baseline  # loading the model, the adapter and the rows
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "gradiend_" in n)
    info: dict[str, Any] = {"seq_len": seq_len, "entries": tuner.num_entries(), "adapter_bytes": adapter_bytes}
    if phase == "training":
        import datasets as ds

        args = GradiendTrainingArguments(
            output_dir=os.path.join("/tmp", f"memory_planner_{os.getpid()}"), rows_per_gradient=case["rows"],
            max_steps=3, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            logging_steps=100, dataloader_pin_memory=False, use_cpu=True, learning_rate=1e-4)
        trainer = GradiendTrainer(model=model, args=args, train_dataset=ds.Dataset.from_list(rows),
                                  processing_class=tokenizer)
        trainer.train()
        info["saved_adapter_dtypes"] = sorted({str(p.dtype) for n, p in model.named_parameters() if "gradiend_" in n})
    elif phase == "encoding":
        batch = collator(rows[: case["rows"]])
        encode_rows(tuner, {k: v for k, v in batch.items() if torch.is_tensor(v)})
    else:
        neutral = [" ".join(FILLER[(i + j) % len(FILLER)] for j in range(case["words"])) + " ."
                   for i in range(SEARCH_TEXTS)]
        result = search_rewrite(model, rows[:SEARCH_ROWS], neutral, tokenizer=tokenizer, lrs=(1.0, 10.0),
                                feature_factors=(1.0, -1.0), refine=False, progress=False, batch_size=32)
        info["candidates"] = len(result.candidates)
        info["search_seq_len"] = max(int(t.shape[1]) for t in [collator(rows[:32])["input_ids"]] + [
            tokenizer(neutral, return_tensors="pt", padding=True)["input_ids"]])
    peak = proc_status("VmHWM")
    info.update({"baseline_rss": baseline, "peak_rss": peak, "measured": peak - baseline, "setup_peak": setup_peak,
                 "seconds": time.perf_counter() - started})
    return info


# ------------------------------------------------------------------------------------------- the orchestrator
def planned(case: dict[str, Any], phase: str, measured: dict[str, Any]) -> dict[str, Any]:
    from gradiend_peft.planning import estimate_memory

    model: Any = case["model"]
    layers = None
    if model.startswith("tiny:"):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tiny import MODEL_BUILDERS

        model = MODEL_BUILDERS[model.split(":", 1)[1]]().config
    if case["layers"]:
        from gradiend_peft.cli.steps import parse_layers

        layers = parse_layers(case["layers"])
    plan = estimate_memory(model, layers=layers, dtype=case.get("dtype", "float32"),
                           autocast_adapter_dtype=case.get("autocast_adapter_dtype", True),
                           rows_per_gradient=case["rows"], seq_len=measured["seq_len"],
                           search_rows=SEARCH_ROWS + SEARCH_TEXTS, search_batch_size=32,
                           search_seq_len=measured.get("search_seq_len"))
    phase_plan = next(p for p in plan.phases if p.phase == phase and p.mode == "single")
    assert plan.entries == measured["entries"], (plan.entries, measured["entries"])
    return {"planned": phase_plan.peak, "components": phase_plan.components, "entries": plan.entries,
            "adapter_bytes_planned": plan.adapter_bytes}


def run_worker(name: str, phase: str, allocator: str) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--phase", phase]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if allocator == "mmap":  # glibc returns every freed block above 128 KB at once: RSS follows the live tensors
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{name}/{phase} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _grouped(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    grouped: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        grouped.setdefault((r["case"], r["phase"]), {})[r["allocator"]] = r
    return grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="tiny,smollm2,bf16", help=f"Cases or groups: {sorted(CASES)}, {sorted(GROUPS)}.")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--allocators", default="default,mmap",
                        help="default: glibc as configured; mmap: MALLOC_MMAP_THRESHOLD_=131072 (no freed block kept).")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory_planner.json"))
    parser.add_argument("--replan", action="store_true",
                        help="Measure nothing: plan the stored measurements of --out again (after a planner change).")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.phase == "prepare":
            prepare(CASES[args.worker], create=True)
            print(json.dumps({}))
        else:
            print(json.dumps(worker(prepare(CASES[args.worker]), args.phase)))
        return
    names = [n for part in args.cases.split(",") for n in GROUPS.get(part, [part])]
    phases, allocators = args.phases.split(","), args.allocators.split(",")
    records, commands = [], []
    if os.path.isfile(args.out):  # keep the measurements not rerun
        with open(args.out, encoding="utf-8") as handle:
            previous = json.load(handle)
        commands = previous.get("commands", [])
        records = [r for r in previous["records"] if args.replan
                   or not (r["case"] in names and r["phase"] in phases and r["allocator"] in allocators)]
    if args.replan:
        for record in records:
            record.update(planned(CASES[record["case"]], record["phase"], record))
            record["error"] = (record["planned"] - record["measured"]) / record["measured"]
        names = []
    for name in names:
        run_worker(name, "prepare", "default")
        for phase in phases:
            for allocator in allocators:
                measured = run_worker(name, phase, allocator)
                plan = planned(CASES[name], phase, measured)
                error = (plan["planned"] - measured["measured"]) / measured["measured"]
                records.append({"case": name, "phase": phase, "allocator": allocator, **CASES[name], **measured,
                                **plan, "error": error})
                print(f"{name:<28} {phase:<9} {allocator:<8} planned {plan['planned'] / MB:>9,.1f} MB  measured "
                      f"{measured['measured'] / MB:>9,.1f} MB  error {100 * error:+6.1f}%  "
                      f"({measured['seconds']:.0f} s)", flush=True)
    order = {n: i for i, n in enumerate(CASES)}
    records.sort(key=lambda r: (order.get(r["case"], 99), PHASES.index(r["phase"]), r["allocator"]))
    table = ["| case | phase | T | planned MB | measured MB (glibc default) | error | measured MB (mmap threshold) "
             "| error |", "|---|---|---|---|---|---|---|---|"]
    for (case, phase), group in _grouped(records).items():
        cells = []
        for allocator in ("default", "mmap"):
            r = group.get(allocator)
            cells += ["-", "-"] if r is None else [f"{r['measured'] / MB:,.0f}", f"{100 * r['error']:+.1f}%"]
        first = next(iter(group.values()))
        table.append(f"| {case} | {phase} | {first['seq_len']} | {first['planned'] / MB:,.0f} | " + " | ".join(cells)
                     + " |")
    print("\n".join(table))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    import torch

    commands.append({"command": "python benchmarks/memory_planner_check.py " + " ".join(sys.argv[1:]),
                     "git": git.stdout.strip() or None})
    payload = {"commands": commands,
               "records": records, "table": table, "torch": torch.__version__, "machine": platform.platform(),
               "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "git": git.stdout.strip() or None}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
