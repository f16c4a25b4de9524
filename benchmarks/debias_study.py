"""Which GRADIEND edit debiases SmolLM2-135M: training data, the decoder-bias edit, a projection, and LEACE.

Every adapter targets the projections of blocks 20-29 (n = 35.4M), trains 100 steps of 16 rows (lr 1e-5, the
trainer's defaults otherwise, ``init_seed`` 42), and its rewrite is chosen by the ``debias`` policy on the *search*
split of the neutral-context rows (380 rows, 200 control rows that may not lose accuracy, LMS >= 0.99 x base, 48
neutral corpus sentences; feature factors -1..1, rates 1-1000, one refinement round). Every reported number is
measured on the *report* split (400 rows of other templates and occupations, 200 control rows of other subjects)
and on StereoSet/CrowS-Pairs/Wino (`gradiend_peft.bias.benchmarks`).

    python benchmarks/debias_study.py train corpus names occupations   # adapters into --out/adapters/<kind>-20-29
    python benchmarks/debias_study.py search corpus names occupations  # the debias search + the held-out report
    python benchmarks/debias_study.py project occupations names        # occupations' bias with names' D, c removed
    python benchmarks/debias_study.py benchmarks occupations:0:100 names:0:54.77 --leace 20,29

Results go to ``--out`` (default /tmp/debias-study) as JSON; docs/guides/debiasing.md shows them. On 2 CPU cores a
training takes 8-13 minutes, a search 8-9 minutes, the benchmarks of one model about 2-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

LAYERS = range(20, 30)
FEATURE_SPEC = {"M": ["he"], "F": ["she"]}
SEARCH = dict(lrs=[1, 3, 10, 30, 100, 300, 1000], feature_factors=[-1, -0.5, 0, 0.5, 1], refine_rounds=1,
              control_floor=1.0)


def _feature():
    from gradiend_peft.data import Feature

    return Feature(FEATURE_SPEC)


def neutral_texts(n: int = 48) -> list[str]:
    from gradiend_peft.bias.gender import related_forms
    from gradiend_peft.data import load_corpus, mine_neutral

    feature = _feature()
    neutral = mine_neutral(load_corpus("english"), feature, exclude_words=related_forms(feature)).shuffle(seed=0)
    neutral = neutral.filter(lambda r: len(r["text"].split()) * 2 < 2048)
    return [r["text"] for r in neutral.select(range(n))]


def training_rows(kind: str, tokenizer):
    from gradiend_peft.cli.steps import drop_unusable_rows
    from gradiend_peft.data import collator_for, load_corpus, mine_pairs
    from gradiend_peft.bias.gender import name_rows, occupation_rows

    if kind == "corpus":
        pairs = mine_pairs(load_corpus("english"), _feature(), min_context_words=5, max_rows_per_class=400)
    else:
        pairs = (name_rows if kind == "names" else occupation_rows)(_feature())
    collator = collator_for(tokenizer, "causal_lm")
    for split in list(pairs):
        pairs[split] = drop_unusable_rows(pairs[split], collator, split)
    if len(pairs["validation"]) > 64:
        pairs["validation"] = pairs["validation"].shuffle(seed=0).select(range(64))
    return pairs


def load(out: str, kind: str):
    """SmolLM2 with the trained adapter ``kind`` (trained first if missing)."""
    import gradiend_peft
    from gradiend_peft.embedded_models import load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer("smollm2-135m")
    folder = os.path.join(out, "adapters", f"{kind}-20-29")
    if os.path.isdir(folder):
        return gradiend_peft.load_gradiend_model(base, folder), tokenizer
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig, GradiendTrainer, GradiendTrainingArguments
    from gradiend_peft.cli.steps import layer_targets

    model = get_peft_model(base, GradiendConfig(target_modules=layer_targets(base, list(LAYERS)),
                                                feature_classes=["M", "F"], init_seed=42))
    pairs = training_rows(kind, tokenizer)
    args = GradiendTrainingArguments(output_dir=os.path.join(out, "train", kind), rows_per_gradient=16,
                                     max_steps=100, eval_steps=25, save_strategy="no", logging_steps=25,
                                     report_to="none", disable_tqdm=True)
    trainer = GradiendTrainer(model=model, args=args, train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer)
    started = time.time()
    trainer.train()
    print(kind, "trained in", round(time.time() - started), "s", trainer.training_summary, flush=True)
    gradiend_peft.save_adapter(model, folder, training_summary=trainer.training_summary)
    return model, tokenizer


def held_out(model, tokenizer, rewrite: tuple[float, float] | None, adapter: str = "default") -> dict:
    """Base and ``rewrite`` on the report split: gap, probabilities, stereotype preference, controls, LMS (``None``:
    the model as it is, e.g. with LEACE's hooks)."""
    from gradiend_peft.bias.gender import context_controls, neutral_context_rows
    from gradiend_peft.evaluation import measure_rewrites
    from gradiend_peft.evaluation.measure import preference

    rows = list(neutral_context_rows(_feature(), "report"))
    rewrites = [(0.0, 0.0)] + ([rewrite] if rewrite is not None else [])
    measured = measure_rewrites(model, rows, neutral_texts(), rewrites, tokenizer=tokenizer,
                                control=list(context_controls(_feature(), "report")), classes=FEATURE_SPEC,
                                adapter_name=adapter)
    report = {}
    for (metrics, probs), name in zip(measured, ("base", "rewrite")):
        report[name] = {"gap": metrics.mean_abs_gap, "P_he": metrics.class_probs["M"],
                        "P_she": metrics.class_probs["F"], "control_acc": metrics.control_accuracy, "lms": metrics.lms,
                        "stereotype_pref": preference(probs, [r["factual_class"] for r in rows], ["M", "F"])}
    return report


def search(model, tokenizer, feature_factors=None, adapter: str = "default") -> dict:
    from gradiend_peft.bias.gender import context_controls, neutral_context_rows
    from gradiend_peft.evaluation import search_rewrite

    options = dict(SEARCH, feature_factors=feature_factors or SEARCH["feature_factors"])
    started = time.time()
    result = search_rewrite(model, list(neutral_context_rows(_feature(), "search")), neutral_texts(),
                            tokenizer=tokenizer, policy="debias", adapter_name=adapter,
                            control=list(context_controls(_feature(), "search")), progress=False, **options)
    entry = {"seconds": time.time() - started, "candidates": [c.to_dict() for c in result.candidates]}
    if result.best is not None:
        entry["chosen"] = [result.best.feature_factor, result.best.lr]
        entry["held_out"] = held_out(model, tokenizer, tuple(entry["chosen"]), adapter)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["train", "search", "project", "benchmarks"])
    parser.add_argument("items", nargs="+")
    parser.add_argument("--out", default="/tmp/debias-study")
    parser.add_argument("--leace", default=None, help="blocks for the LEACE baseline, e.g. 20,29")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    results: dict = {}
    if args.step == "train":
        for kind in args.items:
            load(args.out, kind)
        return
    if args.step == "search":
        for kind in args.items:
            model, tokenizer = load(args.out, kind)
            results[kind] = search(model, tokenizer)
            print(kind, json.dumps(results[kind].get("held_out")), flush=True)
    elif args.step == "project":
        from gradiend_peft.editing import project_out

        stereotype, definitional = args.items
        model, tokenizer = load(args.out, stereotype)
        model.load_adapter(os.path.join(args.out, "adapters", f"{definitional}-20-29"), adapter_name="definitional")
        model.set_adapter("default")
        projection = project_out(model, "default", against=["definitional"], drop_weight=True)
        results["projection"] = {"cosines": projection.cosines, "kept_norm": projection.kept_norm}
        results["search"] = search(model, tokenizer, feature_factors=[0.0])
        print(json.dumps(results["projection"]), json.dumps(results["search"].get("held_out")), flush=True)
    else:
        from gradiend_peft.bias.benchmarks import BiasBenchmarkReport, compare_reports, run_bias_benchmarks

        reports = {}
        for item in args.items:  # kind:feature_factor:lr
            kind, ff, lr = item.split(":")
            model, tokenizer = load(args.out, kind)
            if "base" not in reports:
                reports["base"] = run_bias_benchmarks(model, tokenizer, batch_size=32, progress=False)
            with model.base_model.steer(float(ff), float(lr), cache=True):
                reports[item] = run_bias_benchmarks(model, tokenizer, batch_size=32, progress=False)
        if args.leace:
            from gradiend_peft.bias.leace import LeaceBaseline

            layers = [int(x) for x in args.leace.split(",")]
            rows = list(training_rows("occupations", tokenizer)["train"])
            leace = LeaceBaseline.fit(model, rows, tokenizer, "causal_lm", layers=layers)
            with leace.applied():
                reports[f"leace {args.leace}"] = run_bias_benchmarks(model, tokenizer, batch_size=32, progress=False)
                leace_held_out = held_out(model, tokenizer, None)["base"]
            print("LEACE held out", json.dumps(leace_held_out), flush=True)
        results = {name: report.to_dict() for name, report in reports.items()}
        if args.leace:
            results["leace_held_out"] = leace_held_out
        print(compare_reports({n: BiasBenchmarkReport.from_dict(r) for n, r in results.items()
                               if n != "leace_held_out"}), flush=True)
    with open(os.path.join(args.out, f"{args.step}.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
