"""`GradiendTrainingArguments`: transformers' `TrainingArguments` with GRADIEND's defaults and options.

The defaults are the reference implementation's (AdamW, learning rate 1e-5, weight decay 1e-2, 3 epochs, constant
learning rate, no gradient clipping, 32 rows per gradient, evaluation every 250 steps), plus what the GRADIEND
trainer needs from the Trainer (``remove_unused_columns=False``, an evaluation before the first step, the best
adapter chosen by the absolute correlation). Every field works with ``HfArgumentParser`` like any other.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import TrainingArguments

logger = logging.getLogger(__name__)

CLASS_BALANCES = ("oversample", "undersample", "none")


def _bf16_device_kind() -> Optional[str]:
    """The accelerator kind whose bf16 support decides, or ``None`` on a CPU-only machine."""
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def bf16_supported(device_kind: Optional[str]) -> bool:
    """Whether bf16 compute works on ``device_kind`` (``None``/``"cpu"``: torch's CPU kernels always have it)."""
    if device_kind in (None, "cpu"):
        return True
    if device_kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_kind == "xpu":
        return True
    if device_kind == "mps":
        return False
    return False


@dataclass
class GradiendTrainingArguments(TrainingArguments):
    """Training arguments for `GradiendTrainer`.

    Besides every `transformers.TrainingArguments` field (with GRADIEND's defaults below), it adds:

    Args:
        rows_per_gradient (`int`): Rows of one feature class whose batch-mean gradient forms one GRADIEND sample
            (the reference's ``train_batch_size``, default 32). It is the batch size of training and evaluation:
            leave ``per_device_train_batch_size`` / ``per_device_eval_batch_size`` unset (they follow it), or set them
            equal to it.
        per_example (`bool`): Train on per-example samples instead: every row is its own GRADIEND sample, and a
            row group contributes the mean of its rows' losses. Computed from one backward pass per gradient kind
            without forming per-example gradients.
        class_balance (`str`): How row groups of unequal classes fill an epoch: ``oversample`` (the smaller class
            is cycled so that both classes give as many groups as the larger), ``undersample`` (as many as the
            smaller) or ``none`` (every row once; the end of an epoch may hold one class only).
        encoder_lr_fan_in (`int`, *optional*): The encoder weights ``E`` learn at
            ``learning_rate * encoder_lr_fan_in / n``, ``n`` the adapter's input entries (the decoder, the decoder
            bias and the encoder bias at ``learning_rate``). With inputs at unit RMS, one AdamW step moves every
            entry of ``E`` by about its learning rate, so the encoding ``<E, s g>`` moves by about
            ``0.8 * lr * n``: 0.1 for a tiny model, hundreds for a 100M-entry one, which saturates the tanh at the
            first step. Scaling by ``1 / n`` (the 1/fan-in rule for Adam) makes the step the same at any size; the
            default reference fan-in of 16384 keeps ``learning_rate`` as it is for an ``n`` of 16384. ``None``
            trains every parameter at ``learning_rate``.
        compute_eval_loss (`bool`): Also report ``eval_loss``, the reconstruction MSE of the validation row groups
            (costs two more backward passes per group than the correlation alone).
        sign_normalization (`bool`): After each evaluation, orient the encoder so that the first feature class
            encodes to +1 (see `SignNormalizationCallback`).
        sign_flip_below (`float`): Flip when the correlation is below this. The flip keeps the adapter's function
            and mirrors the optimizer state, so flipping on any negative correlation (the default) is safe; the
            reference flips below -0.6.
        restore_best_adapter (`bool`): At the end, put back the adapter of the evaluation with the highest
            absolute correlation (see `BestAdapterCallback`). Ignored with ``load_best_model_at_end=True``, where
            the Trainer restores its own best checkpoint.
        convergence_min_correlation (`float`): Convergence needs the best ``|correlation|`` at least this.
        convergence_min_class_mean (`float`): Convergence needs both class means at least this in absolute value
            (and of opposite signs).
        history_file (`str`): Name of the training history JSON written into ``output_dir`` at the end (a file name,
            not a path).
        truncate_long_rows (`bool`): A row longer than the base model's positions is refused with its index named
            (``False``, the default), or truncated to the tokens nearest its slot (``True``).
        adapter_shards (`int`): Split the adapter's target modules over this many processes (``P``; default 1: every
            process holds the whole adapter). Each process then holds about ``1/P`` of the adapter and of its
            optimizer state; ``W`` launched processes train ``P`` shards times ``W / P`` data-parallel replicas.
            See docs/guides/sharding.md.
        overwrite_output_dir (`bool`): Start a new run in an ``output_dir`` that holds another run's
            ``checkpoint-<step>`` folders, deleting them first. Without it (the default) such a run is refused, since
            it would overwrite them one by one; resuming (``train(resume_from_checkpoint=...)``) needs neither.
    """

    # ----------------------------------------------------------------------------------- GRADIEND options
    rows_per_gradient: int = field(
        default=32, metadata={"help": "Rows of one feature class whose mean gradient forms one GRADIEND sample."}
    )
    per_example: bool = field(
        default=False, metadata={"help": "Every row is its own GRADIEND sample (one-backward per-example engine)."}
    )
    class_balance: str = field(
        default="oversample", metadata={"help": f"How unequal classes fill an epoch, one of {CLASS_BALANCES}."}
    )
    encoder_lr_fan_in: Optional[int] = field(
        default=16384,
        metadata={"help": "Encoder weights learn at learning_rate * encoder_lr_fan_in / n (n: the adapter's input "
                          "entries), so one step moves the encoding equally at any model size; None: no scaling."},
    )
    compute_eval_loss: bool = field(
        default=True, metadata={"help": "Also report eval_loss, the reconstruction MSE of the validation groups."}
    )
    sign_normalization: bool = field(
        default=True, metadata={"help": "After each evaluation, orient the encoder so the first class encodes +1."}
    )
    sign_flip_below: float = field(
        default=0.0, metadata={"help": "Flip when the evaluation correlation is below this (reference: -0.6)."}
    )
    restore_best_adapter: bool = field(
        default=True, metadata={"help": "At the end, restore the adapter of the best |correlation| evaluation."}
    )
    convergence_min_correlation: float = field(
        default=0.5, metadata={"help": "Convergence needs the best |correlation| at least this."}
    )
    convergence_min_class_mean: float = field(
        default=0.5, metadata={"help": "Convergence needs both |class means| at least this, of opposite signs."}
    )
    history_file: str = field(
        default="gradiend_training_history.json", metadata={"help": "Training history JSON written to output_dir."}
    )
    truncate_long_rows: bool = field(
        default=False,
        metadata={"help": "Rows longer than the model's positions: False refuses them naming the row; True keeps the "
                          "tokens nearest the slot."},
    )

    adapter_shards: int = field(
        default=1,
        metadata={"help": "Split the adapter's target modules over this many processes (1: no sharding); the launched "
                          "processes must be a multiple of it (shards x data-parallel replicas)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds another run's checkpoints, deleting them "
                          "(without it such a run is refused; resuming needs neither)."},
    )

    # ------------------------------------------------------------------- TrainingArguments, new defaults
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (reference: 1e-5)."})
    weight_decay: float = field(
        default=1e-2, metadata={"help": "AdamW weight decay, applied to every adapter parameter (reference: 1e-2)."}
    )
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (reference: none, i.e. constant)."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0 disables (reference)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate the encoder: no, steps, epoch."})
    eval_steps: Optional[float] = field(default=250, metadata={"help": "Steps between evaluations (reference: 250)."})
    eval_on_start: bool = field(
        default=True, metadata={"help": "Evaluate the untrained adapter first (convergence needs a best step > 0)."}
    )
    save_steps: float = field(default=250, metadata={"help": "Steps between checkpoints."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept in output_dir."})
    logging_steps: float = field(default=25, metadata={"help": "Steps between training-loss logs."})
    metric_for_best_model: Optional[str] = field(
        default="abs_correlation", metadata={"help": "Metric for best checkpoints and early stopping."}
    )
    per_device_train_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Follows rows_per_gradient (a GRADIEND batch is one row group); leave unset."}
    )
    per_device_eval_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Follows rows_per_gradient (a GRADIEND batch is one row group); leave unset."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Always False: the collator needs the text columns."}
    )

    def __post_init__(self) -> None:
        rows = self.rows_per_gradient
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows_per_gradient must be a positive integer, got {self.rows_per_gradient!r}.")
        shards = self.adapter_shards
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"adapter_shards must be a positive integer, got {shards!r}.")
        steps = self.gradient_accumulation_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be a positive integer (1: an update per row group), "
                             f"got {steps!r}.")
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 would train nothing, but transformers' loop still takes one step before its stop check "
                "(changing the adapter). Pass max_steps=-1 to train num_train_epochs, or a positive number of steps; "
                "to use an untrained adapter, do not call train()."
            )
        if self.class_balance not in CLASS_BALANCES:
            raise ValueError(f"class_balance must be one of {CLASS_BALANCES}, got {self.class_balance!r}.")
        if self.encoder_lr_fan_in is not None and (isinstance(self.encoder_lr_fan_in, bool) or self.encoder_lr_fan_in < 1):
            raise ValueError(f"encoder_lr_fan_in must be a positive integer or None, got {self.encoder_lr_fan_in!r}.")
        name = self.history_file
        if name is not None and (not isinstance(name, str) or not name or os.path.basename(name) != name
                                 or name in (".", "..")):
            raise ValueError(
                f"history_file must be a file name inside output_dir, got {name!r}; set output_dir to choose the "
                "folder."
            )
        if self.remove_unused_columns:
            logger.warning(
                "GradiendTrainingArguments sets remove_unused_columns=False: the collator needs the text, factual "
                "and alternative columns, which the base model's forward does not take."
            )
            self.remove_unused_columns = False
        if self.fp16 or self.fp16_full_eval:
            raise ValueError(
                "GRADIEND does not train with fp16 mixed precision: the base model's gradients are the method's "
                "input and underflow in fp16 without loss scaling. Use bf16=True where the hardware has bf16, or "
                "keep float32."
            )
        if self.bf16 or self.bf16_full_eval:
            kind = None if self.use_cpu else _bf16_device_kind()
            if kind is None:
                # torch's CPU kernels have bf16; transformers only refuses bf16 on CPU unless use_cpu is set
                self.use_cpu = True
            elif not bf16_supported(kind):
                raise ValueError(
                    f"bf16=True, but this {kind} device has no bf16 support (CUDA needs an Ampere or newer GPU). "
                    "Train in float32 (bf16=False), or use a device with bf16, or use_cpu=True (slow but exact)."
                )
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and _bf16_device_kind() is None:
            # without use_cpu, accelerate reports no distributed setup for CPU processes launched together, and the
            # evaluation would not gather the other processes' encodings
            logger.info("Several processes on a CPU-only machine: setting use_cpu=True so that evaluation gathers.")
            self.use_cpu = True
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, rows)
            elif value != rows:
                raise ValueError(
                    f"{name}={value} differs from rows_per_gradient={rows}: a GRADIEND batch is one row group. Set "
                    f"rows_per_gradient only (the batch sizes follow it; with dataclasses.replace, pass {name}=None "
                    "together with a new rows_per_gradient)."
                )
        super().__post_init__()
