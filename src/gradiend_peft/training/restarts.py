"""Training restarts: several attempts with different seeds, keeping the best (the reference tries up to 3 seeds).

`GradiendTrainer.train` trains once; `train_with_restarts` runs the attempts explicitly. Attempt ``i`` uses seed
``seeds[i]`` (data order and, from the second attempt on, the adapter's initialisation:
``GradiendConfig.init_seed = seed``). The first attempt trains the adapter as given, in ``output_dir``; later ones
run in ``output_dir/seed-<seed>``. The gradient scale calibrated by the first attempt is kept, so that all attempts
share units. Each finished attempt leaves ``gradiend_attempt.json`` and ``gradiend_attempt_adapter.safetensors`` in
its folder, so that ``train_with_restarts(..., resume_from_checkpoint=True)`` skips finished attempts and resumes the
interrupted one from its last checkpoint.

Selection: converged attempts beat the others, then the higher ``|correlation|``; ``selection="first_converged"``
stops at the first converged attempt. The selected adapter is put back into the model;
``trainer.training_summary["attempts"]`` and ``output_dir/gradiend_seed_report.json`` hold the report.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from transformers.trainer_utils import TrainOutput

from ..atomic import json_safe
from .callbacks import adapter_snapshot, restore_adapter_snapshot
from .checkpoints import last_complete_checkpoint

logger = logging.getLogger(__name__)

ATTEMPT_FILE = "gradiend_attempt.json"
ATTEMPT_ADAPTER_FILE = "gradiend_attempt_adapter.safetensors"
SEED_REPORT_FILE = "gradiend_seed_report.json"


@dataclass(frozen=True)
class SeedResult:
    """One training attempt.

    Attributes:
        seed (`int`): Its seed.
        output_dir (`str`): Its checkpoints and history.
        converged (`bool`): Its convergence verdict.
        correlation (`float`): The correlation of its best evaluation.
        best_step (`int` or `None`): The step of its best evaluation.
        global_step (`int`): The steps it trained.
        training_loss (`float`): Its mean logged training loss (MSE).
        summary (`dict`): Its full ``training_summary``.
    """

    seed: int
    output_dir: str
    converged: bool
    correlation: float
    best_step: Optional[int]
    global_step: int
    training_loss: float
    summary: dict = field(default_factory=dict)

    def score(self) -> tuple[bool, float]:
        """Ordering of attempts: converged first, then higher ``|correlation|`` (NaN lowest)."""
        value = abs(self.correlation) if math.isfinite(self.correlation) else -1.0
        return self.converged, value

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "SeedResult":
        data = dict(data)
        data["correlation"] = float("nan") if data.get("correlation") is None else data["correlation"]
        data["training_loss"] = float("nan") if data.get("training_loss") is None else data["training_loss"]
        return cls(**data)


@dataclass(frozen=True)
class SeedReport:
    """All attempts and the selected one.

    Attributes:
        attempts (`tuple[SeedResult, ...]`): In the order they ran.
        selected_seed (`int`): The seed whose adapter was kept.
        selection (`str`): ``first_converged`` or ``best``.
    """

    attempts: tuple[SeedResult, ...]
    selected_seed: int
    selection: str

    @property
    def selected(self) -> SeedResult:
        return next(a for a in self.attempts if a.seed == self.selected_seed)

    def to_dict(self) -> dict[str, Any]:
        return {"selected_seed": self.selected_seed, "selection": self.selection,
                "attempts": [a.to_dict() for a in self.attempts]}


def reinitialize_adapter(tuner, adapter_name: str, seed: int) -> None:
    """Re-draws the adapter's initial weights with ``init_seed = seed`` (the core's initialisation scheme)."""
    scale = tuner.gradiend_gradient_scale[adapter_name].clone()
    tuner.reset_adapter(adapter_name, seed=seed)
    tuner.gradiend_gradient_scale[adapter_name].copy_(scale)  # the calibration is the data's, not the seed's


def _load_finished(folder: str):
    from safetensors.torch import load_file

    record, tensors = os.path.join(folder, ATTEMPT_FILE), os.path.join(folder, ATTEMPT_ADAPTER_FILE)
    if not (os.path.isfile(record) and os.path.isfile(tensors)):
        return None
    with open(record) as handle:
        result = SeedResult.from_dict(json.load(handle))
    return result, load_file(tensors)


def _save_finished(folder: str, result: SeedResult, snapshot) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(snapshot, os.path.join(folder, ATTEMPT_ADAPTER_FILE))
    with open(os.path.join(folder, ATTEMPT_FILE), "w") as handle:
        json.dump(result.to_dict(), handle, indent=2)


SELECTIONS = ("first_converged", "best")


def train_with_restarts(trainer, seeds: Optional[list[int]] = None, num_seeds: int = 3,
                        selection: str = "first_converged", resume_from_checkpoint=None, **train_kwargs) -> TrainOutput:
    """Trains ``trainer``'s adapter up to ``len(seeds)`` times, keeping the best attempt (see the module docstring).

    Args:
        trainer (`GradiendTrainer`): The trainer of the first attempt (its model, data, arguments and callbacks are
            reused by the later ones).
        seeds (`list[int]`, *optional*): The attempts' seeds (default ``args.seed, args.seed + 1, ...``).
        num_seeds (`int`): How many attempts without ``seeds`` (the reference tries up to 3).
        selection (`str`): ``first_converged`` (stop at the first converged attempt; otherwise keep the best) or
            ``best`` (run all attempts, keep the best: converged first, then highest ``|correlation|``).
        resume_from_checkpoint (`str` or `bool`, *optional*): Resume the interrupted attempt (finished attempts are
            not run again).

    Returns:
        `TrainOutput`: the selected attempt's. ``trainer.restart_report`` holds the `SeedReport`.
    """
    args = trainer.args
    if trainer.args.adapter_shards > 1:
        raise ValueError("train_with_restarts does not run module-sharded trainers (adapter_shards > 1): a restart "
                         "re-draws the adapter from every module, and each process holds only its own. Run one "
                         "sharded training per seed (GradiendConfig(init_seed=...)) instead.")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
    if seeds is None:
        if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}.")
        seeds = [args.seed + i for i in range(num_seeds)]
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of different integers, got {seeds!r}.")
    tuner, adapter = trainer.tuner, trainer.adapter_name
    root = args.output_dir
    resume_dir = None
    if isinstance(resume_from_checkpoint, str):
        resume_dir = os.path.dirname(os.path.abspath(resume_from_checkpoint))
    resuming = resume_from_checkpoint not in (None, False)
    results: list[SeedResult] = []
    best: Optional[tuple[SeedResult, dict, Any, TrainOutput]] = None
    for index, seed in enumerate(seeds):
        folder = root if index == 0 else os.path.join(root, f"seed-{seed}")
        finished = _load_finished(folder) if resuming else None
        if finished is not None:
            result, snapshot = finished
            state, output = None, TrainOutput(result.global_step, result.training_loss, {})
            logger.info("GRADIEND attempt %d (seed %d) finished before; not run again.", index + 1, seed)
        else:
            if index > 0:
                reinitialize_adapter(tuner, adapter, seed)
            checkpoint = None
            if resuming:
                if resume_dir is not None and os.path.abspath(folder) == resume_dir:
                    checkpoint = resume_from_checkpoint
                elif resume_dir is None and os.path.isdir(folder):
                    checkpoint = last_complete_checkpoint(folder)
            logger.info("GRADIEND attempt %d of at most %d (seed %d)%s.", index + 1, len(seeds), seed,
                        f", resuming from {checkpoint}" if checkpoint else "")
            child_args = dataclasses.replace(args, seed=seed, output_dir=folder)
            child = type(trainer)(
                model=trainer.model, args=child_args, data_collator=trainer.data_collator,
                train_dataset=trainer.train_dataset, eval_dataset=trainer.eval_dataset,
                processing_class=trainer.processing_class, callbacks=trainer.user_callbacks,
                **trainer.init_kwargs,
            )
            for callback in trainer.user_callbacks:  # a new attempt starts with fresh patience
                if hasattr(callback, "early_stopping_patience_counter"):
                    callback.early_stopping_patience_counter = 0
            output = child.train(resume_from_checkpoint=checkpoint, **train_kwargs)
            summary = dict(child.training_summary or {})
            result = SeedResult(
                seed=seed, output_dir=folder, converged=bool(summary.get("converged", False)),
                correlation=float(summary["correlation"]) if summary.get("correlation") is not None else float("nan"),
                best_step=summary.get("best_step"), global_step=int(output.global_step),
                training_loss=float(output.training_loss), summary=summary,
            )
            snapshot = adapter_snapshot(tuner, adapter)
            if child.args.should_save:
                _save_finished(folder, result, snapshot)
            state = child.state
            child.accelerator.free_memory()
            del child
            gc.collect()
        results.append(result)
        if best is None or result.score() > best[0].score():
            best = (result, snapshot, state, output)
        else:
            del snapshot
        if selection == "first_converged" and result.converged:
            break
    result, snapshot, state, output = best
    restore_adapter_snapshot(tuner, adapter, snapshot)
    config = tuner.peft_config[adapter]
    config.init_seed = result.summary.get("init_seed", config.init_seed)
    if result.summary.get("class_signs"):
        config.class_signs = dict(result.summary["class_signs"])
    report = SeedReport(tuple(results), result.seed, selection)
    trainer.training_summary = json_safe({**result.summary, "attempts": report.to_dict()})
    trainer.restart_report = report
    if state is not None:
        trainer.state = state
    if args.should_save:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, SEED_REPORT_FILE), "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    logger.info("GRADIEND: kept the adapter of seed %d (%s, correlation %.3f) out of %d attempt(s).", result.seed,
                "converged" if result.converged else "not converged", result.correlation, len(results))
    return output
