"""Benchmark worker for gradiend_peft (runs in the project's environment).

Started by `run.py`; speaks the line protocol of `worker_common.py`, with the same operations as `ref_worker.py`:

- ``setup``: load the saved model, wrap it with a GRADIEND adapter over every weight matrix of the backbone (all
  Linear/Conv1D modules of the transformer plus the input embedding; the LM head and task heads excluded), collate
  single-class row groups of ``rows_per_gradient`` rows (padded to the longest row of the group);
- ``step``: one training step, ``loss, h, n = reconstruction_loss(tuner, batch); loss.backward(); optimizer.step();
  optimizer.zero_grad()`` with AdamW(lr 1e-5, weight decay 1e-2) over the adapter's parameters (the reference's
  optimiser and defaults; gradients released after the step, as GradiendTrainer / transformers' Trainer do);
- ``floor``: one plain forward + backward of the base model on the same row group (the factual labels' loss, the
  gradient of every base parameter): the physical floor a GRADIEND step is compared with;
- ``encode``: the per-row encodings of 1,000 rows with `GradiendModel.encode_rows` (one backward pass per batch);
- ``train``: a fresh seeded adapter, some steps, then every test row encoded (for the correlation);
- ``search``: the full default rewrite grid (both feature factors x the reference's 16 learning rates, plus the base)
  with the same metrics as the reference (probability of each class's tokens at the slot on the other class's rows,
  LMS on neutral text), each candidate applied with run-time steering (``tuner.steer``) or in-place merging;
- ``save``: adapter size on disk (``save_pretrained``), unpruned and post-pruned to 1%.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_common as wc  # noqa: E402  (redirects stdout first)

STATE: dict = {}
LRS = [100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]
CLASS_WORDS = {"M": ["he"], "F": ["she"]}


def backbone_targets(model) -> tuple[list[str], str, list[str]]:
    """(Linear/Conv1D module names of the backbone, the input-embedding module name, the weight parameter names)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    prefix = getattr(model, "base_model_prefix", "") or ""
    embedding = model.get_input_embeddings()
    embedding_name = next(name for name, module in model.named_modules() if module is embedding)
    linear = [
        name for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and name.startswith(prefix + ".")
    ]
    params = [f"{name}.weight" for name in [embedding_name] + linear]
    return linear, embedding_name, params


def _load(model_dir: str, device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    masked = any("MaskedLM" in arch for arch in (config.architectures or []))
    cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, "masked_lm" if masked else "causal_lm"


def _groups(rows: list[dict], size: int, seed: int) -> list[list[dict]]:
    """Single-class groups of ``size`` rows, classes alternating (the reference's balanced cycling)."""
    rng = random.Random(seed)
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["factual_class"], []).append(row)
    per_class = []
    for cls in sorted(by_class):
        members = list(by_class[cls])
        rng.shuffle(members)
        per_class.append([members[i : i + size] for i in range(0, len(members) - size + 1, size)])
    out = []
    for i in range(max(len(g) for g in per_class)):
        for groups in per_class:
            if groups:
                out.append(groups[i % len(groups)])
    return out


def _build(seed: int) -> None:
    """A fresh adapter (``init_seed=seed``) on the base model (the previous adapter unloaded), and its optimiser."""
    import torch
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig

    STATE.pop("optimizer", None)
    old = STATE.pop("peft", None)
    base = old.unload() if old is not None else STATE.pop("base")  # the base model back, without a copy
    del old
    linear, _, _ = backbone_targets(base)
    config = GradiendConfig(target_modules=linear, include_embeddings=True, feature_classes=["M", "F"],
                            init_seed=seed)
    peft_model = get_peft_model(base, config)
    STATE["peft"] = peft_model
    STATE["tuner"] = peft_model.base_model
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if STATE.get("step_in_backward"):
        # AdamW is element-wise: one AdamW per tensor, stepped as soon as the tensor's gradient is complete, is the
        # same update as one AdamW over all of them, but the 3n gradient floats never coexist
        optimizers = {p: torch.optim.AdamW([p], lr=1e-5, weight_decay=1e-2, eps=1e-8) for p in params}

        def hook(param):
            optimizers[param].step()
            optimizers[param].zero_grad(set_to_none=True)

        for p in params:
            p.register_post_accumulate_grad_hook(hook)
        STATE["optimizer"] = None
    else:
        STATE["optimizer"] = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2, eps=1e-8)
    STATE["next_group"] = 0


def _to(batch: dict) -> dict:
    device = STATE.get("device", "cpu")
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def setup(model_dir: str, rows: str, seed: int = 0, rows_per_gradient: int = 32, threads: int = 1,
          device: str = "cpu", dtype: str = "float32", step_in_backward: bool = False) -> dict:
    wc.fix_threads(threads)
    import json

    import torch

    import gradiend_peft  # noqa: F401
    from gradiend_peft.data import collator_for

    def load():
        STATE["device"] = device
        STATE["step_in_backward"] = step_in_backward
        model, tokenizer, objective = _load(model_dir, device, dtype)
        with open(rows, encoding="utf-8") as handle:
            data = json.load(handle)
        STATE.update(base=model, tokenizer=tokenizer, objective=objective, rows=data,
                     collate=collator_for(tokenizer, objective), rows_per_gradient=rows_per_gradient,
                     params=backbone_targets(model)[2])
        STATE["groups"] = _groups(data["train"], rows_per_gradient, seed)
        STATE["batches"] = [_to(STATE["collate"](g)) for g in STATE["groups"]]
        _build(seed)

    seconds, _ = wc.timed(load)
    params = STATE["params"]
    n = sum(layer.num_entries("default") for layer in STATE["tuner"].gradiend_layers().values())
    return {"n": int(n), "setup_s": seconds, "rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes(),
            "threads": torch.get_num_threads(), "gradient_rows": len(STATE["batches"]), "params": params,
            "tokens": [int(b["input_ids"].shape[1]) for b in STATE["batches"][:8]]}


def set_rows(rows_per_gradient: int, seed: int = 0) -> dict:
    """Regroups the training rows into groups of ``rows_per_gradient`` (model and adapter kept)."""
    STATE["rows_per_gradient"] = rows_per_gradient
    STATE["groups"] = _groups(STATE["rows"]["train"], rows_per_gradient, seed)
    STATE["batches"] = [_to(STATE["collate"](g)) for g in STATE["groups"]]
    STATE["next_group"] = 0
    return {"gradient_rows": len(STATE["batches"])}


def reset_peak() -> dict:
    import gc

    gc.collect()
    return {"reset": wc.reset_peak_rss(), "rss": wc.rss_bytes()}


def _next_batch():
    batches = STATE["batches"]
    batch = batches[STATE["next_group"] % len(batches)]
    STATE["next_group"] += 1
    return batch


def _one_step() -> float:
    from gradiend_peft.objective.losses import reconstruction_loss

    tuner, optimizer = STATE["tuner"], STATE["optimizer"]
    batch = _next_batch()
    loss, _, n = reconstruction_loss(tuner, batch)
    loss.backward()
    if optimizer is not None:  # else the step ran inside backward (step_in_backward)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # as transformers' Trainer (GradiendTrainer) does: after the step
    return float(loss.item()) / n


def step(count: int = 1) -> dict:
    times, losses = [], []
    for _ in range(count):
        seconds, loss = wc.timed(_one_step)
        times.append(seconds)
        losses.append(loss)
    return {"times": times, "losses": losses, "rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes(),
            "gpu_peak": wc.gpu_peak_bytes()}


def floor(count: int = 1) -> dict:
    """Plain forward + backward of the base model on the next row groups: every base parameter's gradient."""
    import torch

    from gradiend_peft.objective.gradients import per_row_losses

    tuner = STATE["tuner"]
    base = STATE["peft"].get_base_model()
    params = [p for n, p in base.named_parameters() if "gradiend_" not in n]
    params = list({id(p): p for p in params}.values())
    flags = [p.requires_grad for p in params]
    times = []
    try:
        for p in params:
            p.requires_grad_(True)
        for _ in range(count):
            batch = _next_batch()

            def run():
                with torch.enable_grad():
                    logits = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = per_row_losses(logits, batch["factual_labels"]).mean()
                    torch.autograd.grad(loss, params)

            times.append(wc.timed(run)[0])
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return {"times": times}


def _pool(rows_wanted: int) -> list[dict]:
    data = STATE["rows"]
    return (data["train"] + data["validation"] + data["test"])[:rows_wanted]


def encode(rows: int = 1000, batch_size: int = 64, limit: int | None = None) -> dict:
    """Per-row encodings of ``rows`` rows, ``batch_size`` rows per backward pass (collation included)."""
    import torch

    from gradiend_peft.objective.encoding import encode_rows

    pool = _pool(rows)[: limit or rows]
    tuner, collate = STATE["tuner"], STATE["collate"]

    def run():
        out = []
        with torch.no_grad():
            for i in range(0, len(pool), batch_size):
                out.append(encode_rows(tuner, _to(collate(pool[i : i + batch_size]))))
        return torch.cat(out)

    seconds, values = wc.timed(run)
    return {"seconds": seconds, "rows": len(pool), "values": values.reshape(-1)[:4].float().cpu().tolist()}


def test_encodings(batch_size: int = 64) -> dict:
    import torch

    from gradiend_peft.objective.encoding import encode_rows

    rows = STATE["rows"]["test"]
    tuner, collate = STATE["tuner"], STATE["collate"]
    values = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            values.append(encode_rows(tuner, _to(collate(rows[i : i + batch_size]))))
    return {"values": torch.cat(values).reshape(-1).float().cpu().tolist(),
            "classes": [r["factual_class"] for r in rows]}


def train(steps: int, seed: int = 0) -> dict:
    _build(seed)
    losses = [_one_step() for _ in range(steps)]
    return {"losses": losses, **test_encodings()}


# ----------------------------------------------------------------------------------------------- rewrite search
def _class_token_ids(tokenizer, objective: str) -> dict[str, list[int]]:
    """Token ids of each class's words in the forms the reference scores ("he" and "He"), single tokens only."""
    ids: dict[str, list[int]] = {}
    for cls, words in CLASS_WORDS.items():
        found = set()
        for word in words:
            for form in (word, word.capitalize()):
                text = form if objective == "masked_lm" else " " + form
                pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(pieces) == 1:
                    found.add(pieces[0])
        ids[cls] = sorted(found)
    return ids


def _prob_batches(prob_rows: list[dict], batch_size: int = 32):
    collate = STATE["collate"]
    return [(collate(prob_rows[i : i + batch_size]), [r["factual_class"] for r in prob_rows[i : i + batch_size]])
            for i in range(0, len(prob_rows), batch_size)]


def _lms_batches(texts: list[str], batch_size: int = 32, seed: int = 0):
    """Neutral text batches: masked LM with 15% of the non-special tokens masked (fixed seed); causal LM as is."""
    import torch

    tokenizer, objective = STATE["tokenizer"], STATE["objective"]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=512, return_special_tokens_mask=True)
        if objective == "masked_lm":
            candidates = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)
            chosen = (torch.rand(enc["input_ids"].shape, generator=generator) < 0.15) & candidates
            labels = torch.where(chosen, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
            inputs = enc["input_ids"].masked_fill(chosen, tokenizer.mask_token_id)
        else:
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            inputs = enc["input_ids"]
        out.append({"input_ids": inputs, "attention_mask": enc["attention_mask"], "labels": labels})
    return out


def _evaluate(model, prob_batches, lms_batches, class_ids) -> dict:
    import torch
    import torch.nn.functional as F

    objective = STATE["objective"]
    sums = {(data_cls, cls): 0.0 for data_cls in class_ids for cls in class_ids}
    counts = {cls: 0 for cls in class_ids}
    with torch.no_grad():
        for batch, classes in prob_batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["factual_labels"]
            first = (labels != -100).float().argmax(dim=1)  # the slot (first label position)
            probs = torch.softmax(logits[torch.arange(len(classes)), first].float(), dim=-1)
            for cls, ids in class_ids.items():
                values = probs[:, ids].sum(-1)
                for row, data_cls in enumerate(classes):
                    sums[(data_cls, cls)] += float(values[row])
            for data_cls in classes:
                counts[data_cls] += 1
        correct = total = 0
        nll = 0.0
        for batch in lms_batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"]
            if objective == "masked_lm":
                mask = labels != -100
                correct += int((logits.argmax(-1)[mask] == labels[mask]).sum())
                total += int(mask.sum())
            else:
                shifted, targets = logits[:, :-1].float(), labels[:, 1:]
                mask = targets != -100
                nll += float(F.cross_entropy(shifted[mask], targets[mask], reduction="sum"))
                total += int(mask.sum())
    lms = correct / max(total, 1) if objective == "masked_lm" else 1.0 / (1.0 + nll / max(total, 1))
    probs = {f"P({cls}|{data_cls})": sums[(data_cls, cls)] / max(counts[data_cls], 1)
             for data_cls in class_ids for cls in class_ids}
    return {"lms": lms, **probs}


def search(prob_rows: int, lms_rows: int, mode: str = "package", apply: str = "steer") -> dict:
    """The reference's default grid on our adapter: base + 2 feature factors x 16 lrs, no refinement.

    ``mode="package"`` runs `gradiend_peft.evaluation.search_rewrite` (slot probabilities and LMS, the candidate
    applied by ``apply``: run-time steering or merge/unmerge); ``mode="inline"`` runs this file's own loop over the
    core (``tuner.steer`` or merge/unmerge), used before the evaluation package existed.
    """
    if mode == "package":
        return _search_package(prob_rows, lms_rows, apply)
    return _search_inline(prob_rows, lms_rows, apply)


def _search_package(prob_rows: int, lms_rows: int, apply: str) -> dict:
    from gradiend_peft.evaluation import search_rewrite

    tuner, peft_model = STATE["tuner"], STATE["peft"]
    data = STATE["rows"]
    per_class: dict[str, list[dict]] = {}
    for row in data["test"]:
        per_class.setdefault(row["factual_class"], []).append(row)
    rows = [r for cls in sorted(per_class) for r in per_class[cls][:prob_rows]]
    texts = data["neutral"][:lms_rows]
    factors = sorted({tuner.feature_factor_for("M"), tuner.feature_factor_for("F")})
    before = wc.peak_rss_bytes()
    wc.reset_peak_rss()
    start_rss = wc.rss_bytes()
    seconds, result = wc.timed(lambda: search_rewrite(
        peft_model, rows, texts, tokenizer=STATE["tokenizer"], policy="strengthen:M", feature_factors=factors,
        lrs=LRS, refine=False, early_stop=False, require_improvement=False, apply=apply, progress=False,
        classes=CLASS_WORDS,
    ))
    best = result.best
    return {"seconds": seconds, "candidates": len(result.candidates), "prob_rows": len(rows), "lms_rows": len(texts),
            "start_rss": start_rss, "peak": wc.peak_rss_bytes(), "peak_before": before, "mode": f"package/{apply}",
            "best": None if best is None else {"feature_factor": best.feature_factor, "lr": best.lr,
                                               "lms": best.lms}, "base_lms": result.base.lms}


def _search_inline(prob_rows: int, lms_rows: int, mode: str = "steer") -> dict:
    tuner, peft_model = STATE["tuner"], STATE["peft"]
    data = STATE["rows"]
    per_class: dict[str, list[dict]] = {}
    for row in data["test"]:
        per_class.setdefault(row["factual_class"], []).append(row)
    rows = [r for cls in sorted(per_class) for r in per_class[cls][:prob_rows]]
    texts = data["neutral"][:lms_rows]
    class_ids = _class_token_ids(STATE["tokenizer"], STATE["objective"])
    factors = sorted({tuner.feature_factor_for("M"), tuner.feature_factor_for("F")})
    before = wc.peak_rss_bytes()
    wc.reset_peak_rss()
    start_rss = wc.rss_bytes()

    def run():
        prob_batches, lms_batches = _prob_batches(rows), _lms_batches(texts)
        model = tuner.model
        grid = {"base": _evaluate(model, prob_batches, lms_batches, class_ids)}
        for factor in factors:
            for lr in sorted(LRS):
                if mode == "steer":
                    with tuner.steer(factor, lr):
                        grid[(factor, lr)] = _evaluate(model, prob_batches, lms_batches, class_ids)
                else:
                    peft_model.merge_adapter(feature_factor=factor, lr=lr)
                    try:
                        grid[(factor, lr)] = _evaluate(model, prob_batches, lms_batches, class_ids)
                    finally:
                        peft_model.unmerge_adapter()
        return grid

    seconds, grid = wc.timed(run)
    base_lms = grid["base"]["lms"]
    best = {}
    for cls, other in (("M", "F"), ("F", "M")):
        ok = [(k, v) for k, v in grid.items() if k != "base" and v["lms"] >= 0.99 * base_lms]
        key, value = max(ok, key=lambda kv: kv[1][f"P({cls}|{other})"]) if ok else ("base", grid["base"])
        best[cls] = {"candidate": str(key), "value": value[f"P({cls}|{other})"], "lms": value["lms"]}
    return {"seconds": seconds, "candidates": len(grid) - 1, "prob_rows": len(rows), "lms_rows": len(texts),
            "start_rss": start_rss, "peak": wc.peak_rss_bytes(), "peak_before": before, "best": best,
            "base_lms": base_lms}


def save(folder: str | None = None, keep: float = 0.01) -> dict:
    from gradiend_peft import prune_adapter

    peft_model = STATE["peft"]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        full, pruned = os.path.join(tmp, "full"), os.path.join(tmp, "pruned")
        full_s, _ = wc.timed(lambda: peft_model.save_pretrained(full))
        small = copy.deepcopy(peft_model)
        prune_s, kept = wc.timed(lambda: prune_adapter(small, keep))
        small.save_pretrained(pruned)
        return {"unpruned_bytes": wc.dir_size(full), "pruned_bytes": wc.dir_size(pruned), "save_s": full_s,
                "prune_s": prune_s, "pruned_n": int(sum(kept.values()))}


def trainer_run(steps: int, seed: int = 0, output_dir: str | None = None) -> dict:
    """``steps`` steps through `GradiendTrainer` (transformers' Trainer loop, evaluation off), each step timed by
    a callback; a fresh adapter with ``seed``. Returns the step times and steps/s over the run."""
    import time

    from transformers import TrainerCallback

    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    fused, STATE["step_in_backward"] = STATE.get("step_in_backward"), False  # the Trainer owns the optimiser
    _build(seed)
    STATE["step_in_backward"] = fused
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = GradiendTrainingArguments(
            output_dir=output_dir or tmp, rows_per_gradient=STATE["rows_per_gradient"], max_steps=steps,
            eval_strategy="no", save_strategy="no", report_to=[], seed=seed, logging_steps=10_000,
            disable_tqdm=True,
        )
        import datasets

        train_rows = datasets.Dataset.from_list(STATE["rows"]["train"])
        trainer = GradiendTrainer(model=STATE["peft"], args=args, train_dataset=train_rows,
                                  processing_class=STATE["tokenizer"], callbacks=[timer])
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    _build(seed)  # leave a fresh adapter and optimiser for the other operations
    return {"times": timer.times, "wall_s": wall, "steps": len(timer.times)}


def memory() -> dict:
    return {"rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes()}


if __name__ == "__main__":
    wc.serve({"setup": setup, "step": step, "floor": floor, "encode": encode, "train": train, "search": search,
              "save": save, "memory": memory, "test_encodings": test_encodings, "set_rows": set_rows,
              "reset_peak": reset_peak, "trainer_run": trainer_run})
