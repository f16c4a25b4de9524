"""GRADIEND's training behaviour as transformers `TrainerCallback` objects.

`GradiendTrainer` adds these before any user callback, in this order, so that what a user callback sees in
``on_evaluate`` is already normalised and recorded:

1. `SignNormalizationCallback`: orient the encoder so that the first feature class encodes to +1;
2. `BestAdapterCallback`: keep the adapter of the evaluation with the highest ``|correlation|`` and restore it at
   the end (persisted into every checkpoint, so a resumed run restores the same adapter);
3. `ConvergenceCallback`: at the end, the convergence verdict (METHOD.md) goes into ``trainer.training_summary``
   and, with the training history, into a JSON file in ``output_dir``;
4. `ResumePointsCallback`: what a resumed run restores beyond the Trainer's own state.

The callbacks find the model, the optimizer and the metrics in the keyword arguments the Trainer passes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import torch
from transformers import TrainerCallback

from ..atomic import atomic_write_json, json_safe
from ..objective.metrics import SIGNED_METRICS

logger = logging.getLogger(__name__)

ODD_ACTIVATIONS = frozenset({"tanh", "hardtanh", "id"})
"""Activations with ``act(-x) = -act(x)``: only for these does negating the encoder negate the encoding."""

# optimizer state entries that change sign with the parameter (first moments) / that do not (second moments)
_ODD_STATE = frozenset({"exp_avg", "momentum_buffer"})
_EVEN_STATE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "step", "sum"})

BEST_ADAPTER_FILE = "gradiend_best_adapter.safetensors"
BEST_RECORD_FILE = "gradiend_best_adapter.json"
SIGN_FLIP_KEY = "gradiend_sign_flip"


# ----------------------------------------------------------------------------------------- adapter snapshots
def adapter_snapshot(tuner, adapter_name: str) -> dict[str, torch.Tensor]:
    """A CPU copy of one adapter's tensors held by ``tuner`` (`GradiendModel.adapter_state_dict`: layer slices,
    encoder bias, gradient scale, kept indices; 3n + k floats), restorable with `restore_adapter_snapshot`."""
    tensors = tuner.adapter_state_dict(adapter_name)
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


@torch.no_grad()
def restore_adapter_snapshot(tuner, adapter_name: str, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Copies a snapshot back into the adapter's tensors, in place (the optimizer keeps its references)."""
    tensors = tuner.adapter_state_dict(adapter_name)
    missing = sorted(set(tensors) - set(snapshot))
    extra = sorted(set(snapshot) - set(tensors))
    if missing or extra:
        raise ValueError(
            f"The snapshot does not fit adapter {adapter_name!r}: missing {missing[:3]}, unexpected {extra[:3]}."
        )
    for name, tensor in tensors.items():
        tensor.copy_(snapshot[name].to(tensor.device, tensor.dtype))


# ------------------------------------------------------------------------------------- sign normalisation
def normalize_sign(tuner, adapter_name: str, optimizer: Optional[torch.optim.Optimizer] = None) -> str:
    """Negates the orientation of the adapter's latent space while keeping its function.

    For an odd activation (``tanh``, ``hardtanh``, ``id``) the encoder weights ``E``, the encoder bias ``b_e``
    and the decoder weights ``D`` are negated and the decoder bias ``c`` is kept: then ``h(g)`` becomes ``-h(g)``
    and ``d(h) = D h + c`` becomes ``(-D)(-h) + c``, the same reconstruction of every gradient. The optimizer's
    first-moment state of those parameters is negated too (second moments are even), so that training continues
    as the mirror image of what it would have been. Other activations are not odd, so their weights cannot be
    flipped this way; there the adapter's ``class_signs`` are negated instead (metadata only).

    Returns:
        `str`: ``"weights"`` or ``"class_signs"``.

    Raises:
        RuntimeError: when the adapter is merged into the base weights (unmerge first).
    """
    config = tuner.peft_config[adapter_name]
    layers = tuner.gradiend_layers(adapter_name)
    if any(adapter_name in layer.merged_adapters for layer in layers.values()):
        raise RuntimeError(f"Adapter {adapter_name!r} is merged; unmerge it before normalising its sign.")
    if config.activation not in ODD_ACTIVATIONS:
        if config.class_signs:
            config.class_signs = {name: -sign for name, sign in config.class_signs.items()}
        return "class_signs"
    params = [tuner.gradiend_encoder_bias[adapter_name]]
    for layer in layers.values():
        params += [layer.gradiend_encoder[adapter_name], layer.gradiend_decoder[adapter_name]]
    with torch.no_grad():
        for param in params:
            param.neg_()
    if optimizer is not None:
        _negate_first_moments(optimizer, params)
    return "weights"


def _negate_first_moments(optimizer, params) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    unknown = set()
    for param in params:
        state = inner.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if key in _ODD_STATE and torch.is_tensor(value):
                value.neg_()
            elif key not in _EVEN_STATE:
                unknown.add(key)
    if unknown:
        logger.warning(
            "Sign normalisation negated the adapter but does not know whether the optimizer state entries %s change "
            "sign with the parameters; they were left as they are.", sorted(unknown)
        )


class SignNormalizationCallback(TrainerCallback):
    """After an evaluation whose correlation is below ``threshold``, orients the encoder so that the class whose
    ``class_signs`` entry is +1 (the first feature class by default) encodes to +1 (see `normalize_sign`).

    The metrics passed to later callbacks get ``<prefix>_sign_flipped = 1.0``; the values measured before the
    flip stay as they were logged. A ``{"gradiend_sign_flip": ..., "step": ...}`` entry is added to
    ``state.log_history`` (and thus to checkpoints and the training history).

    Args:
        threshold (`float`): Flip when the correlation is below this. The flip keeps the function exactly (and the
            optimizer state is mirrored), so no hysteresis is needed: the default flips on any negative
            correlation (the reference flips below -0.6).
        metric_prefix (`str`): Prefix of the evaluation metrics (``eval``).
    """

    def __init__(self, threshold: float = 0.0, metric_prefix: str = "eval") -> None:
        self.threshold = threshold
        self.metric_prefix = metric_prefix
        self.flips: list[int] = []

    def reset(self) -> None:
        self.flips = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, optimizer=None, **kwargs):
        key = f"{self.metric_prefix}_correlation"
        if not metrics or key not in metrics or model is None:
            return
        value = metrics[key]
        if not (value < self.threshold):  # also skips NaN
            return
        adapter = model.active_adapter
        how = normalize_sign(model.base_model, adapter, optimizer)
        self.flips.append(state.global_step)
        metrics[f"{self.metric_prefix}_sign_flipped"] = 1.0
        state.log_history.append({SIGN_FLIP_KEY: how, "step": state.global_step})
        logger.info(
            "GRADIEND: correlation %.3f at step %d; negated the %s of adapter %r so that its first class encodes to "
            "+1.", value, state.global_step, "encoder/decoder weights" if how == "weights" else "class signs", adapter
        )


# ---------------------------------------------------------------------------------------------- best adapter
def oriented_metrics(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The metrics of ``prefix`` without the prefix, negated where a sign flip followed the measurement."""
    start = f"{prefix}_"
    plain = {k[len(start):]: v for k, v in metrics.items() if k.startswith(start) and isinstance(v, (int, float))}
    if plain.pop("sign_flipped", 0.0):
        for key in list(plain):
            if key in SIGNED_METRICS or key.startswith("mean_"):
                plain[key] = -plain[key]
    return plain


class BestAdapterCallback(TrainerCallback):
    """Keeps a copy of the adapter at the evaluation with the highest ``|correlation|`` and restores it when training
    ends (ties keep the earlier step; with ``eval_on_start`` the untrained adapter competes as step 0).

    The copy is taken after sign normalisation, so it is the adapter as it was then. It is written into every
    checkpoint (``gradiend_best_adapter.safetensors`` and ``.json``) so that a resumed run knows the best adapter
    of the interrupted one. With ``load_best_model_at_end=True`` the Trainer restores its own best checkpoint
    instead and this callback only records. In a module-sharded run (``shard`` set by the trainer) each process keeps
    its own modules' copy and writes it as ``gradiend_best_adapter-00001-of-00002.safetensors``, ...

    Args:
        metric_prefix (`str`): Prefix of the evaluation metrics (``eval``).
        restore (`bool`): Restore the best adapter at the end of training.
    """

    def __init__(self, metric_prefix: str = "eval", restore: bool = True) -> None:
        self.metric_prefix = metric_prefix
        self.restore = restore
        self.shard: Optional[tuple[int, int, bool]] = None  # (shard, shards, whether this process writes it)
        self.reset()

    def _tensor_file(self) -> str:
        if self.shard is None:
            return BEST_ADAPTER_FILE
        stem = BEST_ADAPTER_FILE.removesuffix(".safetensors")
        return f"{stem}-{self.shard[0] + 1:05d}-of-{self.shard[1]:05d}.safetensors"

    def reset(self) -> None:
        self.best_value: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_metrics: Optional[dict[str, float]] = None
        self.class_signs: Optional[dict[str, float]] = None  # non-odd activations normalise these instead
        self.snapshot: Optional[dict[str, torch.Tensor]] = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        key = f"{self.metric_prefix}_abs_correlation"
        if not metrics or key not in metrics or model is None:
            return
        value = float(metrics[key])
        if math.isnan(value) or (self.best_value is not None and not value > self.best_value):
            return
        self.best_value = value
        self.best_step = int(state.global_step)
        self.best_metrics = oriented_metrics(metrics, self.metric_prefix)
        signs = model.peft_config[model.active_adapter].class_signs
        self.class_signs = dict(signs) if signs else None
        self.snapshot = adapter_snapshot(model.base_model, model.active_adapter)

    def on_save(self, args, state, control, **kwargs):
        writes = state.is_world_process_zero if self.shard is None else self.shard[2]
        if self.snapshot is None or not writes:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self.save(folder)

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        save_file(self.snapshot, os.path.join(folder, self._tensor_file()))
        if self.shard is not None and self.shard[0] != 0:
            return  # the record (the same on every shard) is written by the first shard
        record = {"best_value": self.best_value, "best_step": self.best_step, "best_metrics": self.best_metrics,
                  "class_signs": self.class_signs}
        with open(os.path.join(folder, BEST_RECORD_FILE), "w") as handle:
            json.dump(record, handle, indent=2)

    def load(self, folder: str) -> bool:
        """Restores the record of an interrupted run from its checkpoint ``folder``; ``False`` if it has none."""
        from safetensors.torch import load_file

        tensors = os.path.join(folder, self._tensor_file())
        record = os.path.join(folder, BEST_RECORD_FILE)
        if not (os.path.isfile(tensors) and os.path.isfile(record)):
            self.reset()
            return False
        with open(record) as handle:
            data = json.load(handle)
        self.best_value = data["best_value"]
        self.best_step = data["best_step"]
        self.best_metrics = data["best_metrics"]
        self.class_signs = data.get("class_signs")
        self.snapshot = load_file(tensors)
        return True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.restore or self.snapshot is None or model is None or args.load_best_model_at_end:
            return
        restore_adapter_snapshot(model.base_model, model.active_adapter, self.snapshot)
        if self.class_signs:
            model.peft_config[model.active_adapter].class_signs = dict(self.class_signs)
        logger.info("GRADIEND: restored the adapter of step %s (|correlation| %.4f).", self.best_step, self.best_value)


# ------------------------------------------------------------------------------------------------ convergence
@dataclass(frozen=True)
class ConvergenceVerdict:
    """Whether a GRADIEND training converged (METHOD.md): the best evaluation came after step 0, its
    ``|correlation| >= min_correlation``, and both class means are at least ``min_class_mean`` in absolute value and
    of opposite signs.

    Attributes:
        converged (`bool`): The verdict.
        reasons (`tuple[str, ...]`): Why not (empty when converged).
        best_step (`int` or `None`): Step of the best evaluation (``None``: never evaluated).
        correlation (`float`): Its correlation, oriented like the final adapter.
        accuracy (`float`): Its accuracy.
        class_means (`dict[str, float]`): Its mean encoding per class, oriented like the final adapter.
    """

    converged: bool
    reasons: tuple[str, ...]
    best_step: Optional[int]
    correlation: float
    accuracy: float
    class_means: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def convergence_verdict(best_step: Optional[int], metrics: Optional[Mapping[str, float]], class_names: list[str],
                        min_correlation: float = 0.5, min_class_mean: float = 0.5) -> ConvergenceVerdict:
    """The verdict for the best evaluation's unprefixed ``metrics`` (``correlation``, ``accuracy``,
    ``mean_<class>``)."""
    if best_step is None or not metrics:
        return ConvergenceVerdict(False, ("the encoder was never evaluated (set eval_strategy and eval_dataset)",),
                                  None, float("nan"), float("nan"), {})
    correlation = float(metrics.get("correlation", float("nan")))
    means = {name: float(metrics.get(f"mean_{name}", float("nan"))) for name in class_names}
    reasons = []
    if best_step <= 0:
        reasons.append("the best evaluation is the untrained adapter (step 0)")
    if not abs(correlation) >= min_correlation:
        reasons.append(f"|correlation| {abs(correlation):.3f} < {min_correlation}")
    for name, mean in means.items():
        if not abs(mean) >= min_class_mean:
            reasons.append(f"|mean of class {name}| {abs(mean):.3f} < {min_class_mean}")
    values = list(means.values())
    if len(values) == 2 and not (values[0] * values[1] < 0):
        reasons.append("the class means do not have opposite signs")
    return ConvergenceVerdict(not reasons, tuple(reasons), int(best_step), correlation,
                              float(metrics.get("accuracy", float("nan"))), means)


def training_history(log_history: list[dict], metric_prefix: str = "eval") -> dict[str, list]:
    """Splits a Trainer ``log_history`` into evaluations, training-loss logs and sign flips."""
    start = f"{metric_prefix}_"
    evaluations, losses, flips = [], [], []
    for entry in log_history:
        if SIGN_FLIP_KEY in entry:
            flips.append({"step": entry.get("step"), "what": entry[SIGN_FLIP_KEY]})
        elif any(k.startswith(start + "correlation") or k == start + "loss" for k in entry):
            evaluations.append({"step": entry.get("step"), "epoch": entry.get("epoch"),
                                **{k[len(start):]: v for k, v in entry.items() if k.startswith(start)}})
        elif "loss" in entry:
            losses.append({k: entry[k] for k in ("step", "epoch", "loss", "grad_norm", "learning_rate") if k in entry})
    return {"evaluations": evaluations, "training_loss": losses, "sign_flips": flips}


class ConvergenceCallback(TrainerCallback):
    """At the end of training: the convergence verdict of the best evaluation (from ``best``) as ``summary`` (the
    trainer's ``training_summary``), and the training history written to ``output_dir/<history_file>`` (evaluations,
    training losses, sign flips, verdict).

    Args:
        best (`BestAdapterCallback`): Where the best evaluation is recorded.
        class_names (`list[str]`): The feature classes, as they appear in the ``mean_<class>`` metrics.
        metric_prefix (`str`): Prefix of the evaluation metrics (``eval``).
    """

    def __init__(self, best: BestAdapterCallback, class_names: list[str], metric_prefix: str = "eval") -> None:
        self.best = best
        self.class_names = list(class_names)
        self.metric_prefix = metric_prefix
        self.verdict: Optional[ConvergenceVerdict] = None
        self.summary: Optional[dict[str, Any]] = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        verdict = convergence_verdict(
            self.best.best_step, self.best.best_metrics, self.class_names,
            getattr(args, "convergence_min_correlation", 0.5), getattr(args, "convergence_min_class_mean", 0.5),
        )
        self.verdict = verdict
        history = training_history(state.log_history, self.metric_prefix)
        summary = {
            **verdict.to_dict(),
            "best_metrics": dict(self.best.best_metrics or {}),
            "global_step": int(state.global_step),
            "seed": int(args.seed),
            "learning_rate": float(args.learning_rate),
            "rows_per_gradient": int(getattr(args, "rows_per_gradient", args.per_device_train_batch_size)),
            "per_example": bool(getattr(args, "per_example", False)),
            "sign_flips": [flip["step"] for flip in history["sign_flips"]],
        }
        if model is not None:
            config = model.peft_config[model.active_adapter]
            summary["init_seed"] = config.init_seed
            if config.class_signs:
                summary["class_signs"] = dict(config.class_signs)
        self.summary = json_safe(summary)
        if verdict.converged:
            logger.info("GRADIEND converged: best step %s, correlation %.3f, class means %s.", verdict.best_step,
                        verdict.correlation, verdict.class_means)
        else:
            logger.warning("GRADIEND did not converge: %s.", "; ".join(verdict.reasons))
        history_file = getattr(args, "history_file", None)
        if history_file and state.is_world_process_zero and args.output_dir:
            atomic_write_json(os.path.join(args.output_dir, history_file), {**history, "summary": summary})


# ---------------------------------------------------------------------------------------------------- resuming
class ResumePointsCallback(TrainerCallback):
    """What a resumed run restores beyond the Trainer's own state, for a `GradiendTrainer`: at the start of training,
    a half-precision adapter's float32 masters from the checkpoint (after the Trainer loaded the rounded adapter;
    ``trainer._restore_masters``); before each epoch's iterator is made, the training sampler's epoch,
    ``global_step // updates per epoch`` (the Trainer's own count), so that a resumed run continues the interrupted
    epoch's group order."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_masters()

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = self.trainer._train_sampler
        if sampler is None or train_dataloader is None:
            return
        updates = max(1, len(train_dataloader) // args.gradient_accumulation_steps)
        sampler.set_epoch(state.global_step // updates)
