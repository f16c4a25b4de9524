"""Checks `GradiendTrainer` runs before training: its arguments, the rows, the adapter's classes, trainability,
precision, the checkpoint to resume from and the output folder of a new run. Each refuses what cannot work with a
message naming the fix."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Optional

import torch

from ..loading import INDEX_NAME
from ..tuner.config import FUNCTION_FIELDS
from .arguments import GradiendTrainingArguments, bf16_supported
from .checkpoints import checkpoint_folders

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("text", "factual", "alternative")


def check_trainer_arguments(model, args: Optional[GradiendTrainingArguments], eval_dataset,
                            kwargs: dict[str, Any]) -> tuple[GradiendTrainingArguments, dict[str, Any]]:
    """Refuses what `GradiendTrainer` cannot take (its own loss and metrics replaced, no model, other arguments, an
    evaluation without rows); returns the arguments (default ones for ``None``) and the keyword arguments that are
    set."""
    for unsupported in ("model_init", "compute_loss_func", "compute_metrics", "preprocess_logits_for_metrics"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(
                f"GradiendTrainer does not take {unsupported}: it computes the GRADIEND loss and the encoder "
                "metrics itself. Use callbacks (on_evaluate sees the metrics) or trainer.predict(rows) for encodings."
            )
    if model is None:
        raise ValueError("GradiendTrainer needs model=peft.get_peft_model(base_model, GradiendConfig(...)).")
    if args is None:
        args = GradiendTrainingArguments(output_dir="gradiend_trainer_output")
    if not isinstance(args, GradiendTrainingArguments):
        raise TypeError(
            f"GradiendTrainer takes GradiendTrainingArguments, got {type(args).__name__}: "
            "GradiendTrainingArguments(output_dir=..., ...) accepts every TrainingArguments field."
        )
    if eval_dataset is None and args.eval_strategy == "no":
        args.eval_on_start = False  # nothing to evaluate
    if args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError(
            "GRADIEND evaluates the encoder on validation rows every eval_steps (correlation, class means, best "
            "adapter, convergence): pass eval_dataset=pairs['validation'], or set eval_strategy='no'."
        )
    return args, {k: v for k, v in kwargs.items() if v is not None}


def first_dataset(eval_dataset):
    if isinstance(eval_dataset, dict):
        return next(iter(eval_dataset.values()), None)
    return eval_dataset


def check_rows(dataset, what: str = "dataset", collator=None) -> None:
    """Refuses datasets the trainer cannot use, before any step: not a `datasets.Dataset` (an `IterableDataset`:
    the class-pure row groups need random access), empty, rows whose factual word equals the alternative (an
    all-zero diff target), and words the collator refuses (e.g. not in the vocabulary), each with the fix."""
    if dataset is None:
        return
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"{what} is a datasets.IterableDataset; GradiendTrainer groups rows by class and needs random access. "
            "Load it as a datasets.Dataset (e.g. Dataset.from_list(list(iterable)) or load_dataset(..., "
            "streaming=False))."
        )
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(
            f"GradiendTrainer takes datasets.Dataset rows (text, factual, alternative, factual_class, label), got "
            f"{type(dataset).__name__} for {what}. gradiend_peft.data.mine_pairs makes them."
        )
    missing = [c for c in ROW_COLUMNS if c not in columns]
    if missing and "input_ids" in columns:
        raise ValueError(
            "GradiendTrainer takes rows, not pre-tokenised tensors: the collator tokenises each row group and puts "
            "the labels. Pass the rows of gradiend_peft.data.mine_pairs (text, factual, alternative, label)."
        )
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; GradiendTrainer needs {list(ROW_COLUMNS)} "
                         "(gradiend_peft.data.mine_pairs makes them).")
    if len(dataset) == 0:
        raise ValueError(f"{what} has no rows; mine more text or lower the mining filters (e.g. min_context_words).")
    pairs = {}
    for index, (factual, alternative) in enumerate(zip(dataset["factual"], dataset["alternative"])):
        if str(factual).strip().lower() == str(alternative).strip().lower():
            raise ValueError(
                f"{what} row {index}: the factual word {factual!r} equals the alternative, so the difference of the "
                "two gradients is zero and the row teaches nothing. Give each row an alternative of the other class."
            )
        pairs.setdefault((factual, alternative), index)
    if collator is None:
        return
    check = set(pairs.values())  # one row per word pair: the collator refuses unknown or split words
    limit, tokenizer = getattr(collator, "max_length", None), getattr(collator, "tokenizer", None)
    if limit is not None and not getattr(collator, "truncation", False) and tokenizer is not None:
        # the whole text (one batched tokenizer call) bounds a row's length: rows near the limit are collated
        lengths = [len(ids) for ids in tokenizer(list(dataset["text"]))["input_ids"]]
        check.update(i for i, n in enumerate(lengths) if n > limit - 8)
    for index in sorted(check):
        try:
            collator([dataset[index]])
        except ValueError as err:
            message = str(err).removeprefix("row 0").lstrip(": ")
            raise ValueError(f"{what} row {index}{' ' if message.startswith('is ') else ': '}{message}") from err


def check_checkpoint_unfinished(checkpoint: str, max_steps: int) -> None:
    """Refuses to resume from a checkpoint whose ``trainer_state.json`` transformers cannot resume from (see
    `_trainer_state_problem`), or that already reached ``max_steps``: transformers' loop would train one step more
    (its stop check follows a step), changing a finished adapter."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"it is not readable JSON ({err})"
    else:
        problem = _trainer_state_problem(state)
    if problem:
        raise ValueError(
            f"Cannot resume from {checkpoint!r}: its trainer_state.json is not one transformers' Trainer wrote "
            f"({problem}). Resume from a complete checkpoint of the run (resume_from_checkpoint=True picks the last "
            "one), or start anew without resume_from_checkpoint."
        )
    step = state["global_step"]
    if max_steps > 0 and step >= max_steps:
        raise ValueError(
            f"{checkpoint!r} already reached max_steps ({step} of {max_steps}): there is nothing left to train. Load "
            "its adapter (gradiend_peft.load_gradiend_model), or raise max_steps to train on from it."
        )


def _trainer_state_problem(state: Any) -> Optional[str]:
    """What keeps transformers from resuming from a parsed ``trainer_state.json`` (``None``: nothing): it must be an
    object of `TrainerState`'s keys with an integer ``global_step`` >= 0, ``train_batch_size`` >= 1 and a
    ``log_history`` list (every Trainer checkpoint has them; ``{"global_step": 1}`` alone made the Trainer fail with a
    bare ``TypeError``)."""
    import dataclasses

    from transformers import TrainerState

    if not isinstance(state, dict):
        return "it is not a JSON object"
    unknown = sorted(set(state) - {f.name for f in dataclasses.fields(TrainerState)})
    if unknown:
        return f"it has keys a Trainer never writes: {unknown[:5]}"
    for key, least in (("global_step", 0), ("train_batch_size", 1)):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"its {key} is {value!r}, not an integer >= {least}"
    if not isinstance(state.get("log_history"), list):
        return "it has no log_history list"
    return None


def check_checkpoint_fits(checkpoint: str, config, adapter: str, shards: int = 1) -> dict[str, Any]:
    """Refuses to resume from a checkpoint whose adapter is not this GRADIEND adapter (another PEFT method, or any
    config field that changes what the adapter computes, `gradiend_peft.tuner.config.FUNCTION_FIELDS`: the fields are
    named) or that another number of ``adapter_shards`` wrote, before any state is restored. Returns the checkpoint's
    saved config."""
    if not os.path.isdir(checkpoint):
        raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a folder. Pass a checkpoint-<step> folder of "
                         "output_dir, or True for the last one.")
    folder = checkpoint if adapter == "default" else os.path.join(checkpoint, adapter)
    path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{checkpoint!r} holds no adapter_config.json for adapter {adapter!r}: it is not a checkpoint "
                         "of a GradiendTrainer run. Pass a checkpoint-<step> folder of this run's output_dir.")
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    problems = []
    if not isinstance(saved, dict) or saved.get("peft_type") != "GRADIEND":
        kind = saved.get("peft_type") if isinstance(saved, dict) else None
        problems.append(f"it holds a {kind} adapter, not a GRADIEND one")
    else:
        for key in FUNCTION_FIELDS:
            ours, theirs = getattr(config, key), saved.get(key)
            if theirs == ours:
                continue
            if isinstance(ours, dict) and isinstance(theirs, dict):
                differ = sorted(set(ours) ^ set(theirs)) or sorted(k for k in ours if ours[k] != theirs.get(k))
                problems.append(f"its {key} differ (e.g. {differ[:3]})")
            else:
                problems.append(f"its {key} is {theirs!r}, this adapter's is {ours!r}")
        sharded = os.path.isfile(os.path.join(folder, INDEX_NAME))
        if sharded != (shards > 1):
            problems.append(
                f"it was written by a run {'with' if sharded else 'without'} adapter_shards > 1, and this trainer runs "
                f"{'with' if shards > 1 else 'without'} (resume with the adapter_shards it was trained with; "
                "load_gradiend_model loads either kind as one adapter)")
    if problems:
        raise ValueError(
            f"Cannot resume from {checkpoint!r}: {'; '.join(problems)}. Resume only from checkpoints of the same "
            "GRADIEND configuration (or start a new run in another output_dir)."
        )
    return saved


def claim_output_dir(args: GradiendTrainingArguments) -> bool:
    """Refuses a new run into an ``output_dir`` that holds another run's ``checkpoint-<step>`` folders: the new run
    would overwrite them one by one, the Trainer's rotation (``save_total_limit``) would delete either run's, and
    ``resume_from_checkpoint=True`` would pick the other run's newest. With ``overwrite_output_dir=True`` those folders
    are deleted first (by the saving process). Returns whether any were deleted.
    """
    folders = checkpoint_folders(args.output_dir)
    if not folders:
        return False
    names = [os.path.basename(f) for f in folders]
    if not args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {args.output_dir!r} already holds checkpoints of another run ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}); a new run would overwrite them. Resume that run with "
            "trainer.train(resume_from_checkpoint=True), or start over with GradiendTrainingArguments("
            "overwrite_output_dir=True), which deletes them (or choose another output_dir)."
        )
    if args.should_save:
        logger.warning("overwrite_output_dir=True: deleting the checkpoints of another run in %s: %s.",
                       args.output_dir, names)
        for folder in folders:
            shutil.rmtree(folder)
    return True


def _infer_class_pair(dataset) -> Optional[tuple[str, str]]:
    """(class labelled +1, class labelled -1) from ``factual_class`` and ``label`` columns, if present."""
    if dataset is None or not {"factual_class", "label"} <= set(getattr(dataset, "column_names", [])):
        return None
    positive, negative = set(), set()
    for name, label in zip(dataset["factual_class"], dataset["label"]):
        if label > 0:
            positive.add(name)
        elif label < 0:
            negative.add(name)
    if len(positive) != 1 or len(negative) != 1 or positive == negative:
        raise ValueError(
            f"Rows labelled +1 have classes {sorted(positive)} and rows labelled -1 have {sorted(negative)}; GRADIEND "
            "needs one class per label (mine_pairs labels feature.pair[0] +1 and pair[1] -1)."
        )
    return next(iter(positive)), next(iter(negative))


def prepare_feature_classes(config, dataset) -> None:
    """Takes the feature classes from the rows when the adapter has none; checks them otherwise."""
    pair = _infer_class_pair(dataset)
    if pair is None:
        return
    if config.feature_classes is None:
        config.feature_classes = list(pair)
        config.class_signs = {pair[0]: 1.0, pair[1]: -1.0}
    elif set(config.feature_classes) != set(pair):
        raise ValueError(
            f"The adapter's feature_classes {config.feature_classes} are not the classes of the rows {list(pair)}."
        )
    elif config.feature_classes[0] != pair[0]:
        raise ValueError(
            f"The rows label class {pair[0]!r} +1, but the adapter lists feature_classes {config.feature_classes}; "
            f"use GradiendConfig(feature_classes={list(pair)}) (class_signs says which class encodes to +1)."
        )


def check_trainable(model, tuner, adapter: str) -> None:
    own = {id(p) for p in tuner.adapter_parameters(adapter)}
    stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in own]
    if stray:
        raise ValueError(
            f"GradiendTrainer trains only the GRADIEND adapter {adapter!r}, but other parameters require grad: "
            f"{stray[:5]}. Freeze them (e.g. model.base_model.set_requires_grad or param.requires_grad_(False))."
        )
    if not any(p.requires_grad for p in tuner.adapter_parameters(adapter)):
        raise ValueError(f"Adapter {adapter!r} is not trainable; load it with is_trainable=True.")


def check_precision(model, tuner, adapter: str, args: GradiendTrainingArguments) -> None:
    """Refuses precisions that cannot train: an adapter in a dtype that is neither float32/float64 nor half precision
    (half-precision adapters train as float32 masters, see `gradiend_peft.training.precision`), and bf16 on devices
    without it. Warns about float16 storage of large adapters and float16 bases."""
    dtypes = {p.dtype for p in tuner.adapter_parameters(adapter)}
    odd = sorted(str(d) for d in dtypes - {torch.float16, torch.bfloat16, torch.float32, torch.float64})
    if odd:
        raise ValueError(
            f"The GRADIEND adapter {adapter!r} holds tensors in {odd}; it trains in float32 (master weights for "
            "bfloat16/float16 storage). Cast the adapter to float32 or bfloat16, or create it with "
            "autocast_adapter_dtype=True (the default)."
        )
    if torch.float16 in dtypes:
        entries = tuner.num_entries(adapter)
        if entries ** -0.5 < torch.finfo(torch.float16).tiny:
            logger.warning(
                "The GRADIEND adapter %r is stored in float16 and has n = %d entries: its encoder weights (about "
                "1/sqrt(n) = %.2g) fall below float16's smallest normal number and lose precision when rounded back "
                "after training. Store it in bfloat16 (a bfloat16 base with autocast_adapter_dtype=False) or float32.",
                adapter, entries, entries ** -0.5)
    base_dtypes = {p.dtype for p in model.get_base_model().parameters()}
    if torch.bfloat16 in base_dtypes or args.bf16:
        kind = args.device.type
        if not bf16_supported(kind):
            raise ValueError(
                f"The base model is bf16 (or bf16=True), but this {kind} device has no bf16 support (CUDA needs "
                "an Ampere or newer GPU). Load the base model in float32 (torch_dtype=torch.float32)."
            )
    if torch.float16 in base_dtypes:
        logger.warning("The base model is float16: its gradients may overflow (GRADIEND then stops with a "
                       "NonFiniteGradientError). bf16 or float32 bases are safer.")
