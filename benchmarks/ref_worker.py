"""Benchmark worker for the reference implementation ``gradiend==0.2.3`` (runs in benchmarks/.ref-venv).

Started by `run.py`; speaks the line protocol of `worker_common.py`. It drives the reference through its own public
pieces, as its trainer does: `TextPredictionTrainer` for the data, `create_model_with_gradiend` for the model,
`create_training_data` + `create_gradient_training_dataset` for the gradient rows, and for one training step the
body of the reference's core loop (`gradiend.trainer.core.training.train`): take a gradient row, run the GRADIEND,
MSE against the target, ``zero_grad``/``backward``/``step`` of AdamW(lr 1e-5, weight decay 1e-2). Encoder
evaluation uses `create_eval_data` and `ModelWithGradiend.encode`, one row per backward pass as the reference does;
the rewrite search is `TextPredictionTrainer.evaluate_decoder` with its default grid (both feature factors x 16
learning rates, a deep copy of the base model per candidate), probabilities and LMS included.

Nothing of the reference is copied here: this file only calls it.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker_common as wc  # noqa: E402  (redirects stdout first)

STATE: dict = {}


def _frame(rows: dict, test_rows: list | None = None):
    import pandas as pd

    records = []
    splits = ("train", "validation", "test") if test_rows is None else ("train",)
    for split in splits:
        for r in rows[split]:
            records.append(_record(r, split))
    for r in test_rows or []:
        records.append(_record(r, "test"))
    return pd.DataFrame(records)


def _record(r: dict, split: str) -> dict:
    return {"masked": r["text"], "label": r["factual"], "label_class": r["factual_class"],
            "alternative": r["alternative"], "alternative_class": r["alternative_class"], "split": split}


def _trainer(frame, neutral=None, rows_per_gradient: int = 32, seed: int = 0, params=None):
    import torch
    from gradiend import TextPredictionTrainer, TrainingArguments

    args = TrainingArguments(
        train_batch_size=rows_per_gradient, max_seeds=1, do_eval=False, eval_strategy="no", save_strategy="no",
        use_cache=False, seed=seed, params=params, torch_dtype=getattr(torch, STATE.get("dtype", "float32")),
    )
    kwargs = {}
    if neutral is not None:
        import pandas as pd

        kwargs["eval_neutral_data"] = pd.DataFrame({"text": neutral})
    return TextPredictionTrainer(model=STATE["model_dir"], data=frame, target_classes=["M", "F"], args=args, **kwargs)


def _build(seed: int) -> None:
    """A fresh GRADIEND (seeded as the reference's trainer seeds it), its gradient rows and optimiser."""
    import torch
    from gradiend.trainer.factory import create_model_with_gradiend
    from gradiend.trainer.trainer import _apply_seed

    trainer = STATE["trainer"]
    STATE.pop("mwg", None)
    STATE.pop("optimizer", None)
    _apply_seed(seed)
    mwg = create_model_with_gradiend(
        STATE["model_dir"], feature_definition=trainer, model_class=trainer.default_model_with_gradiend_cls,
        training_args=trainer.training_args,
    )
    trainer._model_instance = mwg
    raw = trainer.create_training_data(mwg, batch_size=STATE["rows_per_gradient"])
    STATE["gradient_rows"] = trainer.create_gradient_training_dataset(
        raw, mwg, dtype=mwg.gradiend.torch_dtype, device=mwg.gradiend.device_encoder
    )
    STATE["mwg"] = mwg
    STATE["optimizer"] = torch.optim.AdamW(list(mwg.gradiend.parameters()), lr=1e-5, weight_decay=1e-2, eps=1e-8)
    STATE["criterion"] = torch.nn.MSELoss()
    STATE["next_row"] = 0


def setup(model_dir: str, rows: str, seed: int = 0, rows_per_gradient: int = 32, threads: int = 1,
          params=None, device: str = "cpu", dtype: str = "float32") -> dict:
    """The reference places its models itself (CUDA when available); ``dtype`` is its ``torch_dtype`` (base model
    and GRADIEND alike: the reference has no mixed precision)."""
    STATE["dtype"] = dtype
    wc.fix_threads(threads)
    import json

    import gradiend  # noqa: F401

    with open(rows, encoding="utf-8") as handle:
        data = json.load(handle)
    STATE.update(model_dir=model_dir, rows=data, rows_per_gradient=rows_per_gradient, params=params)
    seconds, _ = wc.timed(lambda: STATE.update(trainer=_trainer(_frame(data), data["neutral"], rows_per_gradient,
                                                                seed, params)))
    build_s, _ = wc.timed(lambda: _build(seed))
    mwg = STATE["mwg"]
    import torch

    return {"n": int(len(mwg)), "setup_s": seconds + build_s, "rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes(),
            "threads": torch.get_num_threads(), "gradient_rows": len(STATE["gradient_rows"]),
            "params": len(mwg.gradiend.param_map)}


def set_rows(rows_per_gradient: int, seed: int = 0) -> dict:
    """Rebuilds the gradient rows with ``rows_per_gradient`` rows each (model, GRADIEND and optimiser kept)."""
    trainer, mwg = STATE["trainer"], STATE["mwg"]
    STATE["rows_per_gradient"] = rows_per_gradient
    trainer.training_args.train_batch_size = rows_per_gradient
    trainer.training_args.base_gradient_batch_size = rows_per_gradient
    raw = trainer.create_training_data(mwg, batch_size=rows_per_gradient)
    STATE["gradient_rows"] = trainer.create_gradient_training_dataset(
        raw, mwg, dtype=mwg.gradiend.torch_dtype, device=mwg.gradiend.device_encoder
    )
    STATE["next_row"] = 0
    return {"gradient_rows": len(STATE["gradient_rows"])}


def reset_peak() -> dict:
    import gc

    gc.collect()
    return {"reset": wc.reset_peak_rss(), "rss": wc.rss_bytes()}


def _one_step() -> float:
    mwg, optimizer, criterion = STATE["mwg"], STATE["optimizer"], STATE["criterion"]
    rows = STATE["gradient_rows"]
    index = STATE["next_row"] % len(rows)
    STATE["next_row"] += 1
    item = rows[index]  # the base-model gradients (factual and alternative, as the reference computes them)
    source = item["source"].unsqueeze(0)  # what the reference's DataLoader (batch size 1) hands the loop
    target = item["target"].unsqueeze(0)
    output, _ = mwg.gradiend(source, return_encoded=True)
    loss = criterion(output, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.item())


def step(count: int = 1) -> dict:
    times, losses = [], []
    for _ in range(count):
        seconds, loss = wc.timed(_one_step)
        times.append(seconds)
        losses.append(loss)
    return {"times": times, "losses": losses, "rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes(),
            "gpu_peak": wc.gpu_peak_bytes()}


def _encoder_rows(rows_wanted: int):
    """The reference's encoder-evaluation dataset over ``rows_wanted`` rows (all splits pooled, as the test split)."""
    key = ("encode_rows", rows_wanted)
    if key not in STATE:
        data = STATE["rows"]
        pool = data["train"] + data["validation"] + data["test"]
        chosen = pool[:rows_wanted]
        rest = pool[rows_wanted:] or pool[:64]
        trainer = _trainer(_frame({"train": rest}, test_rows=chosen), None, STATE["rows_per_gradient"], 0,
                           STATE["params"])
        STATE[key] = trainer.create_eval_data(STATE["mwg"], split="test", source="alternative")
    return STATE[key]


def encode(rows: int = 1000, limit: int | None = None) -> dict:
    """Encodes ``limit`` (default all ``rows``) rows of the evaluation set one at a time, as the reference does."""
    dataset = _encoder_rows(rows)
    count = min(len(dataset), limit or rows)
    mwg = STATE["mwg"]

    def run():
        values = []
        for i in range(count):
            entry = dataset[i]
            values.append(mwg.encode(entry["source"], return_float=True))
        return values

    seconds, values = wc.timed(run)
    return {"seconds": seconds, "rows": count, "dataset_rows": len(dataset), "values": values[:4]}


def test_encodings() -> dict:
    """Encodes every test row (one backward pass each) and returns (encoding, class) pairs for the correlation."""
    trainer, mwg = STATE["trainer"], STATE["mwg"]
    dataset = trainer.create_eval_data(mwg, split="test", source="alternative")
    values, classes = [], []
    for i in range(len(dataset)):
        entry = dataset[i]
        values.append(mwg.encode(entry["source"], return_float=True))
        classes.append(entry["factual_id"])
    return {"values": values, "classes": classes}


def train(steps: int, seed: int = 0) -> dict:
    """A fresh GRADIEND with ``seed``, ``steps`` training steps, then every test row encoded."""
    _build(seed)
    losses = [_one_step() for _ in range(steps)]
    return {"losses": losses, **test_encodings()}


def search(prob_rows: int, lms_rows: int) -> dict:
    """The reference's full default rewrite search: evaluate_decoder with its default grid (2 x 16 + base)."""
    trainer = STATE["trainer"]
    trainer._model_instance = STATE["mwg"]
    before = wc.peak_rss_bytes()
    wc.reset_peak_rss()
    start_rss = wc.rss_bytes()
    tokenizer = STATE["mwg"].tokenizer
    training_like, neutral = trainer._get_decoder_eval_dataframe(
        tokenizer, max_size_training_like=prob_rows, max_size_neutral=lms_rows, split="test"
    )
    seconds, result = wc.timed(lambda: trainer.evaluate_decoder(
        split="test", max_size_training_like=prob_rows, max_size_neutral=lms_rows, use_cache=False,
        training_like_df=training_like, neutral_df=neutral,
    ))
    grid = result.get("grid", {})
    best = {k: v for k, v in result.items() if k != "grid"}
    return {"seconds": seconds, "candidates": len([k for k in grid if k != "base"]), "start_rss": start_rss,
            "prob_rows": len(training_like), "lms_rows": len(neutral),
            "peak": wc.peak_rss_bytes(), "peak_before": before, "summary": _jsonable(best)}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def save(folder: str | None = None, keep: float = 0.01) -> dict:
    """Sizes on disk of the GRADIEND weights (the reference's own save), unpruned and post-pruned to ``keep``."""
    mwg = STATE["mwg"]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        full, pruned = os.path.join(tmp, "full"), os.path.join(tmp, "pruned")
        full_s, _ = wc.timed(lambda: mwg.gradiend.save_pretrained(full))
        prune_s, small = wc.timed(lambda: mwg.prune_gradiend(topk=keep, part="decoder-weight", inplace=False))
        small.gradiend.save_pretrained(pruned)
        return {"unpruned_bytes": wc.dir_size(full), "pruned_bytes": wc.dir_size(pruned), "save_s": full_s,
                "prune_s": prune_s, "pruned_n": int(len(small))}


def memory() -> dict:
    return {"rss": wc.rss_bytes(), "peak": wc.peak_rss_bytes()}


if __name__ == "__main__":
    wc.serve({"setup": setup, "step": step, "encode": encode, "train": train, "search": search, "save": save,
              "memory": memory, "test_encodings": test_encodings, "set_rows": set_rows, "reset_peak": reset_peak})
