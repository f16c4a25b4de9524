"""Peak resident memory of encoder evaluation and of the rewrite search on the embedded demo model, SmolLM2-135M.

    python benchmarks/memory_smollm2.py [--adapter FOLDER] [--out benchmarks/results/memory_smollm2.json]

The setup is the demo's (``gradiend-peft demo``): SmolLM2-135M in float32, a GRADIEND adapter on the block
projections of blocks 20-29 (the CLI's ``--layers 20-29``), he/she rows mined from the embedded English corpus with
64 test rows, 48 neutral texts and 24 control rows. ``--adapter`` loads a trained adapter (`load_gradiend_model`);
without it a fresh one is attached (same shapes: memory does not depend on training). The model, the adapter config
and the data come from the same functions the CLI uses (`gradiend_peft.runner`).

Measured, in one process:

- the parameter bytes of the base model and of the adapter (shared tensors counted once);
- the floor: RSS after loading model + adapter + data, with every parameter read once (the embedded model's
  weights are memory-mapped from its safetensors cache, so after loading only the pages touched so far are resident;
  without the touch the first phase would count the model's own pages as its increase), after ``gc.collect()`` and
  ``malloc_trim(0)``; the untouched RSS is reported too;
- for each phase, the peak RSS: a background thread samples ``VmRSS`` in ``/proc/self/status`` every 5 ms, and the
  kernel's ``VmHWM`` is reset (``/proc/self/clear_refs``) at the start of the phase and read at its end, which also
  catches spikes shorter than a sample (both are reported; the table uses the larger). Before each phase the
  previous one's garbage is collected and the heap trimmed, so each phase starts near the floor. Phases:

  0. the forward passes of one search candidate on the unedited model (`slot_probabilities` on the test rows and
     the control rows, `language_modeling_score` on the neutral texts, prepared as `search_rewrite` prepares them):
     what any evaluation of the model costs, edit or not;
  1. ``evaluate_encoder`` on the test rows + the neutral texts;
  2. ``search_rewrite`` with policy ``balance``, ``lrs=(1, 10, 100)``, ``feature_factors=(-1, 0, 1)``,
     ``refine=False``, ``apply="steer"`` (run-time steering, the default), with the control rows;
  3. the same search with ``apply="merge"`` (merge with a kept original, unmerge);
  4. diagnostics (``--no-diagnostics`` skips them): phases 0, 1 and 2 again with ``config.use_cache = False``.
     The evaluation code already passes ``use_cache=False`` in its forwards, so these repeat the same work and
     show the run-to-run spread of each peak;

- the process's overall peak (includes loading): ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read before every
  VmHWM reset (the reset lowers ``ru_maxrss`` too: both read the kernel's high-water mark) and at the end; the
  largest reading.

The table prints each peak, its increase over the floor, ``peak / floor`` and
``increase / (model bytes + adapter bytes)``. Threads are pinned to 1.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "false" if _var == "TOKENIZERS_PARALLELISM" else "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import torch  # noqa: E402
from proc_memory import proc_status, trim  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from worker_common import reset_peak_rss  # noqa: E402

MB = 1024 * 1024


def rss() -> int:
    return proc_status("VmRSS")


def rss_parts() -> dict[str, int]:
    """Anonymous and file-backed resident bytes (RssAnon, RssFile)."""
    return {"anon": proc_status("RssAnon"), "file": proc_status("RssFile")}


_MAXRSS = [0]


def max_rss_so_far() -> int:
    """The largest ``ru_maxrss`` read so far (bytes); call before every VmHWM reset, which lowers it."""
    _MAXRSS[0] = max(_MAXRSS[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return _MAXRSS[0]


def reset_hwm() -> bool:
    """Resets VmHWM (and with it ``ru_maxrss``) to the current RSS (Linux >= 4.0); False where it cannot."""
    max_rss_so_far()
    return reset_peak_rss()


class RssSampler:
    """Samples VmRSS every ``interval`` seconds in a background thread; ``peak`` is the largest sample since
    `reset`."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss()
            if value > self.peak:
                self.peak = value
            self.samples += 1
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak, self.samples = rss(), 0

    def __enter__(self) -> "RssSampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def measure_phase(sampler: RssSampler, name: str, fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    trim()
    start, start_parts = rss(), rss_parts()
    hwm_ok = reset_hwm()
    sampler.reset()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    sampled, samples = sampler.peak, sampler.samples
    hwm = proc_status("VmHWM") if hwm_ok else None
    end, end_parts = rss(), rss_parts()
    peak = max(sampled, hwm or 0)
    print(f"{name}: {seconds:.1f} s, start {start / MB:,.0f} MB, peak {peak / MB:,.0f} MB "
          f"(sampled {sampled / MB:,.0f}, VmHWM {'-' if hwm is None else f'{hwm / MB:,.0f}'}), end {end / MB:,.0f} MB",
          flush=True)
    return {"seconds": seconds, "start_rss": start, "start_parts": start_parts, "end_parts": end_parts,
            "sampled_peak": sampled, "samples": samples, "vmhwm_peak": hwm,
            "peak": peak, "end_rss": end}, result


def parameter_bytes(module: torch.nn.Module, adapter: bool) -> int:
    """Bytes of the adapter's parameters (``gradiend_`` in the name) or of all the others; shared tensors once."""
    seen, total = set(), 0
    for name, p in module.named_parameters(remove_duplicate=False):
        if ("gradiend_" in name) != adapter or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=None, help="A trained adapter folder (default: attach a fresh adapter).")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "memory_smollm2.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.005, help="Sampling interval in seconds.")
    parser.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                        help="Skip the diagnostic phases with the KV cache off (about 2.5 minutes).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft import get_peft_model

    from gradiend_peft.cli.arguments import DataArguments, ModelArguments
    from gradiend_peft.evaluation import (evaluate_encoder, language_modeling_score, prepare_lms, prepare_slots,
                                          search_rewrite, slot_probabilities)
    from gradiend_peft.loading import load_gradiend_model
    from gradiend_peft.cli.demo import STUDY
    from gradiend_peft.cli.steps import gradiend_config, load_base, mine, parse_classes

    model_args = ModelArguments(model="smollm2-135m", layers="20-29")
    data_args = DataArguments(classes="M:he,F:she", max_test_rows=64, neutral_rows=48, control_rows=24)

    with RssSampler(args.interval) as sampler:
        started = time.perf_counter()
        rss_start = rss()
        base, tokenizer = load_base(model_args)
        model_bytes = parameter_bytes(base, adapter=False)
        if args.adapter:
            model = load_gradiend_model(base, args.adapter)
        else:
            model = get_peft_model(base, gradiend_config(base, model_args, parse_classes(data_args.classes), 42))
        model.eval()
        adapter_bytes = parameter_bytes(model, adapter=True)
        assert parameter_bytes(model, adapter=False) == model_bytes
        entries = sum(layer.num_entries(model.active_adapter)
                      for layer in model.base_model.gradiend_layers().values())
        data = mine(data_args, tokenizer, model, study=STUDY)  # the demo's rows: controls as before
        test, neutral, control = data.pairs["test"], data.neutral, data.control
        setup_s = time.perf_counter() - started
        loading_peak = max_rss_so_far()
        trim()
        untouched, untouched_parts = rss(), rss_parts()
        with torch.no_grad():  # fault in the memory-mapped weights: the floor holds the whole model
            for p in model.parameters():
                p.sum()
        trim()
        floor, floor_parts = rss(), rss_parts()
        print(f"loaded in {setup_s:.0f} s: model {model_bytes / MB:,.0f} MB, adapter {adapter_bytes / MB:,.0f} MB "
              f"(n = {entries:,}), RSS {untouched / MB:,.0f} MB as loaded, floor {floor / MB:,.0f} MB (every "
              f"parameter resident); {len(test)} test rows, {len(neutral)} neutral texts, "
              f"{len(control)} control rows", flush=True)

        phases: dict[str, dict[str, Any]] = {}
        objective = model.peft_config[model.active_adapter].objective
        words = {c: list(data.feature.classes[c]) for c in data.feature.pair}
        slots = prepare_slots(list(test), tokenizer, objective, classes=words)
        control_slots = prepare_slots(control, tokenizer, objective, classes=words) if control else None
        lms_inputs = prepare_lms(neutral, tokenizer, objective, max_length=data.max_length)
        vocab = model.get_base_model().config.vocab_size
        lms_logits = max(b["input_ids"].numel() for b in lms_inputs.batches) * vocab * 4
        lms_shapes = [list(b["input_ids"].shape) for b in lms_inputs.batches]
        slot_shapes = [list(b["input_ids"].shape) for b in slots.batches]

        def base_forwards() -> None:
            forward = model.base_model.model
            slot_probabilities(forward, slots)
            language_modeling_score(forward, lms_inputs)
            if control_slots is not None:
                slot_probabilities(forward, control_slots)

        def encoder() -> Any:
            return evaluate_encoder(model, test, tokenizer=tokenizer, neutral=neutral, progress=False)

        search_kwargs = dict(tokenizer=tokenizer, policy="balance", control=control or None, lrs=(1.0, 10.0, 100.0),
                             feature_factors=(-1.0, 0.0, 1.0), refine=False, max_length=data.max_length,
                             progress=False)
        phases["base_forwards"], _ = measure_phase(sampler, "base_forwards", base_forwards)
        phases["evaluate_encoder"], report = measure_phase(sampler, "evaluate_encoder", encoder)
        results = {}
        for apply in ("steer", "merge"):
            key = f"search_rewrite_{apply}"
            phases[key], results[apply] = measure_phase(
                sampler, key, lambda: search_rewrite(model, test, neutral, apply=apply, **search_kwargs))
        if args.diagnostics:
            # the same phases with transformers' KV cache off (the package's forwards leave use_cache at the
            # config's default, True, so every forward also builds a cache nobody reads)
            config = model.get_base_model().config
            saved = config.use_cache
            config.use_cache = False
            try:
                phases["base_forwards_no_kv_cache"], _ = measure_phase(
                    sampler, "base_forwards_no_kv_cache", base_forwards)
                phases["evaluate_encoder_no_kv_cache"], _ = measure_phase(
                    sampler, "evaluate_encoder_no_kv_cache", encoder)
                phases["search_rewrite_steer_no_kv_cache"], _ = measure_phase(
                    sampler, "search_rewrite_steer_no_kv_cache",
                    lambda: search_rewrite(model, test, neutral, apply="steer", **search_kwargs))
            finally:
                config.use_cache = saved
        del slots, control_slots, lms_inputs
        overall = max_rss_so_far()

    both = model_bytes + adapter_bytes
    print(f"largest LMS batch: logits {lms_logits / MB:,.0f} MB (batches {lms_shapes}, vocabulary {vocab:,})")
    for phase in phases.values():
        phase["increase"] = phase["peak"] - floor
        phase["peak_over_floor"] = phase["peak"] / floor
        phase["increase_over_model_and_adapter"] = phase["increase"] / both
    phases["evaluate_encoder"]["summary"] = report.summary()
    for apply, result in results.items():
        phases[f"search_rewrite_{apply}"]["candidates"] = len(result.candidates)
        phases[f"search_rewrite_{apply}"]["best"] = None if result.best is None else {
            "feature_factor": result.best.feature_factor, "lr": result.best.lr}

    header = f"{'phase':<32} {'peak MB':>8} {'+ floor MB':>10} {'peak/floor':>10} {'+/(model+adapter)':>17} {'s':>6}"
    lines = [header, "-" * len(header)]
    for key, phase in phases.items():
        lines.append(f"{key:<32} {phase['peak'] / MB:>8,.0f} {phase['increase'] / MB:>10,.0f} "
                     f"{phase['peak_over_floor']:>10.3f} {phase['increase_over_model_and_adapter']:>17.3f} "
                     f"{phase['seconds']:>6.0f}")
    print()
    print(f"SmolLM2-135M, blocks 20-29, {'adapter ' + args.adapter if args.adapter else 'fresh adapter'}; "
          f"model {model_bytes / MB:,.0f} MB + adapter {adapter_bytes / MB:,.0f} MB = {both / MB:,.0f} MB; "
          f"floor {floor / MB:,.0f} MB (RSS after loading model, adapter and data)")
    print("\n".join(lines))
    print(f"overall peak (ru_maxrss, includes loading): {overall / MB:,.0f} MB; "
          f"while loading: {loading_peak / MB:,.0f} MB")

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    payload = {
        "model": "smollm2-135m", "dtype": "float32", "layers": "20-29", "adapter": args.adapter,
        "adapter_entries": entries, "test_rows": len(test), "neutral_texts": len(neutral), "control_rows": len(control),
        "search": {"policy": "balance", "lrs": [1.0, 10.0, 100.0], "feature_factors": [-1.0, 0.0, 1.0],
                   "refine": False},
        "model_bytes": model_bytes, "adapter_bytes": adapter_bytes, "rss_before_loading": rss_start,
        "rss_as_loaded": untouched, "rss_as_loaded_parts": untouched_parts, "floor_rss": floor,
        "floor_parts": floor_parts, "lms_batch_logits_bytes": lms_logits,
        "lms_batch_shapes": lms_shapes, "slot_batch_shapes": slot_shapes, "vocab_size": vocab,
        "setup_seconds": setup_s, "diagnostics": args.diagnostics, "phases": phases,
        "overall_peak_ru_maxrss": overall, "loading_peak_ru_maxrss": loading_peak,
        "sample_interval_s": args.interval, "threads": args.threads, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "machine": platform.platform(), "load_average": os.getloadavg(),
        "git": git.stdout.strip() or None, "table": lines,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
