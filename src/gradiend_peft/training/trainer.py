"""`GradiendTrainer`: transformers' `Trainer` (accelerate underneath) training a GRADIEND adapter.

What the Trainer gives for free: devices, DDP, gradient accumulation, checkpoints and resume, logging integrations,
progress bars, callbacks. What this subclass changes:

- **Data**: a `datasets.Dataset` of rows (``text`` with one ``[MASK]``, ``factual``, ``alternative``,
  ``factual_class``, ``label``) and a collator (default ``collator_for(tokenizer, config.objective)``); batches are
  row groups of a single class (`ClassGroupedBatchSampler`), padded to their longest row by the collator.
- **Loss**: one row group is one GRADIEND sample, ``tuner.reconstruction_loss`` (or every row its own sample,
  `per_example_reconstruction_loss`, with ``per_example=True``). The optimised loss is the *sum* of squared errors
  over the ``n`` adapter entries, with gradients brought to unit RMS by the adapter's calibrated gradient scale:
  a mean over ``n`` would give the adapter gradients of order ``1/n`` (1e-11 on a 135M model), below AdamW's
  ``eps``, and nothing would train. The *logged* loss is that sum divided by ``n``, the mean squared error, which
  is comparable across model sizes.
- **Gradient accumulation**: every row group is one sample, so accumulated steps average the groups' losses
  (``loss_is_scaled_for_ga = False``, ``model_accepts_loss_kwargs = False``: the Trainer divides by the number of
  accumulated groups and never passes ``num_items_in_batch``). With DDP the groups of all processes are averaged, so
  ``N`` processes equal one process with ``N`` times the accumulation.
- **DDP**: the loss is computed *through* the wrapped model's forward (the PeftModel's forward is routed to the
  GRADIEND objective for the call), so the DDP reducer sees the step and averages the adapter's gradients.
- **Evaluation**: the encoder on the validation rows (one backward pass per group of rows, under
  ``torch.enable_grad()``): ``eval_correlation``, ``eval_abs_correlation``, ``eval_accuracy``,
  ``eval_mean_<class>``, ``eval_std_<class>`` and the reconstruction ``eval_loss``. ``predict`` returns the row
  encodings in dataset order.
- **Mixed precision**: the adapter stays float32; ``bf16=True`` autocasts only the base model's forward pass (and
  so its backward), never the adapter's sums over millions of entries. A bf16-stored base works as well.
- **Callbacks**: sign normalisation, best adapter, convergence verdict and history (see `callbacks`), then the
  user's callbacks.
- **Seeds**: with ``num_seeds > 1`` and a run that does not converge, later attempts re-initialise the adapter
  with their own seed (see `seeds`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from ..gradients import NonFiniteGradientError, batch_gradients, max_positions
from ..tuner.model import GradiendModel
from .arguments import GradiendTrainingArguments, bf16_supported
from .callbacks import BestAdapterCallback, ConvergenceCallback, SignNormalizationCallback
from .checkpoints import last_complete_checkpoint
from .distributed import end_distributed_training
from .losses import per_example_reconstruction_loss
from .metrics import encoding_metrics, expected_signs
from .sampler import ClassGroupedBatchSampler, row_classes

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("text", "factual", "alternative")


def gradiend_tuner(model) -> GradiendModel:
    """The `GradiendModel` tuner of a PeftModel, or a clear error."""
    tuner = getattr(model, "base_model", None)
    if not isinstance(tuner, GradiendModel):
        raise TypeError(
            f"GradiendTrainer trains a GRADIEND adapter; got a {type(model).__name__}"
            + (f" whose tuner is a {type(tuner).__name__}" if tuner is not None else "")
            + ". Wrap the base model first: model = peft.get_peft_model(base_model, GradiendConfig(...))."
        )
    return tuner


@contextlib.contextmanager
def routed_forward(module: torch.nn.Module, forward: Callable[..., Any]):
    """Makes ``module(...)`` call ``forward`` for the duration (so wrappers such as DDP see a forward pass)."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


def _safe_name(name: str) -> str:
    return re.sub(r"\W+", "_", str(name)).strip("_") or "class"


class GradiendTrainer(Trainer):
    """Trains a GRADIEND adapter with transformers' `Trainer` (see the module docstring for what differs).

    Args:
        model (`peft.PeftModel`): A model from ``get_peft_model(base, GradiendConfig(...))``; its active adapter is
            trained, nothing else.
        args (`GradiendTrainingArguments`, *optional*): Training arguments (defaults: the reference's).
        data_collator (`Callable`, *optional*): Turns a list of rows into a batch; default
            ``gradiend_peft.data.collator_for(processing_class, config.objective)``.
        train_dataset (`datasets.Dataset`, *optional*): Training rows (``mine_pairs(...)["train"]``).
        eval_dataset (`datasets.Dataset` or `dict`, *optional*): Validation rows, needed with an ``eval_strategy``.
        processing_class (tokenizer, *optional*): The tokenizer (for the default collator; saved with checkpoints).
        callbacks (`list[TrainerCallback]`, *optional*): Any transformers callbacks; they run after GRADIEND's.
        optimizers (`tuple`, *optional*, defaults to ``(None, None)``): An ``(optimizer, lr_scheduler)`` pair to use
            instead of the default ones, as for `Trainer`.
        optimizer_cls_and_kwargs (`tuple[type[torch.optim.Optimizer], dict]`, *optional*): An optimizer class and
            its keyword arguments, as for `Trainer` (passed through ``**kwargs``).

    After ``train()``: ``trainer.training_summary`` (also in ``model.peft_config[adapter].training_summary``) holds
    the convergence verdict, and ``trainer.seed_report`` the attempts when several seeds were tried.
    """

    loss_is_scaled_for_ga = False  # one row group = one sample; the Trainer averages accumulated groups

    def __init__(self, model=None, args: Optional[GradiendTrainingArguments] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, callbacks=None,
                 optimizers=(None, None), **kwargs) -> None:
        for unsupported in ("model_init", "compute_loss_func", "compute_metrics", "preprocess_logits_for_metrics"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(
                    f"GradiendTrainer does not take {unsupported}: it computes the GRADIEND loss and the encoder "
                    "metrics itself. Use callbacks (on_evaluate sees the metrics) or trainer.predict(rows) for "
                    "encodings."
                )
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if model is None:
            raise ValueError("GradiendTrainer needs model=peft.get_peft_model(base_model, GradiendConfig(...)).")
        tuner = gradiend_tuner(model)
        if args is None:
            args = GradiendTrainingArguments(output_dir="gradiend_trainer_output")
        if not isinstance(args, GradiendTrainingArguments):
            raise TypeError(
                f"GradiendTrainer takes GradiendTrainingArguments, got {type(args).__name__}: "
                "GradiendTrainingArguments(output_dir=..., ...) accepts every TrainingArguments field."
            )
        adapter = model.active_adapter
        config = model.peft_config[adapter]
        if data_collator is None:
            if processing_class is None:
                raise ValueError(
                    "GradiendTrainer needs processing_class=tokenizer (for the default collator, "
                    "gradiend_peft.data.collator_for(tokenizer, config.objective)) or a data_collator."
                )
            from ..data.collators import collator_for

            data_collator = collator_for(processing_class, config.objective, max_length=max_positions(model),
                                         truncation=args.truncate_long_rows)
        if eval_dataset is None and args.eval_strategy == "no":
            args.eval_on_start = False  # nothing to evaluate
        if args.eval_strategy != "no" and eval_dataset is None:
            raise ValueError(
                "GRADIEND evaluates the encoder on validation rows every eval_steps (correlation, class means, best "
                "adapter, convergence): pass eval_dataset=pairs['validation'], or set eval_strategy='no'."
            )
        tuner.check_unmerged("Training")
        eval_sets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        for dataset, what in [(train_dataset, "train_dataset"), *((d, "eval_dataset") for d in eval_sets)]:
            _check_rows(dataset, what, data_collator)
        _prepare_feature_classes(config, train_dataset if train_dataset is not None else _first(eval_dataset))
        _check_trainable(model, tuner, adapter)
        _check_precision(model, tuner, adapter, args)

        self._user_callbacks = list(callbacks or [])
        self._init_kwargs = dict(kwargs)
        prefix = "eval" if not isinstance(eval_dataset, dict) else f"eval_{next(iter(eval_dataset))}"
        self._metric_prefix = prefix
        if isinstance(eval_dataset, dict) and args.metric_for_best_model in ("abs_correlation", "eval_abs_correlation"):
            # several validation sets: the first one decides (best adapter, convergence, early stopping)
            args.metric_for_best_model = f"{prefix}_abs_correlation"
        self._signs = SignNormalizationCallback(threshold=args.sign_flip_below, metric_prefix=prefix)
        self._best = BestAdapterCallback(metric_prefix=prefix, restore=args.restore_best_adapter)
        self._convergence = ConvergenceCallback(self._best, list(config.feature_classes or []), metric_prefix=prefix)
        own = ([self._signs] if args.sign_normalization else []) + [self._best, self._convergence]
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         callbacks=own + self._user_callbacks, optimizers=optimizers, **kwargs)
        self.model_accepts_loss_kwargs = False  # never pass num_items_in_batch; see loss_is_scaled_for_ga
        self._num_entries = sum(layer.num_entries(adapter) for layer in tuner.gradiend_layers(adapter).values())
        self._train_sampler: Optional[ClassGroupedBatchSampler] = None
        self._class_cache: dict[int, list] = {}
        self.seed_report = None
        self.training_summary: Optional[dict] = None

    # ----------------------------------------------------------------------------------------- accessors
    @property
    def tuner(self) -> GradiendModel:
        return self.model.base_model

    @property
    def adapter_name(self) -> str:
        return self.model.active_adapter

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on every adapter parameter, biases included (as the reference's AdamW)."""
        return [name for name, param in model.named_parameters() if param.requires_grad]

    @property
    def encoder_lr_factor(self) -> float:
        """The encoder weights' learning rate relative to ``learning_rate`` (``encoder_lr_fan_in / n``)."""
        if self.args.encoder_lr_fan_in is None:
            return 1.0
        return self.args.encoder_lr_fan_in / self._num_entries

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the encoder weights in a group of their own at
        ``learning_rate * encoder_lr_factor`` (see ``GradiendTrainingArguments.encoder_lr_fan_in``)."""
        creating = self.optimizer is None
        optimizer = super().create_optimizer(model)
        factor = self.encoder_lr_factor
        if not creating or factor == 1.0:
            return optimizer
        encoders = {id(layer.gradiend_encoder[self.adapter_name])
                    for layer in self.tuner.gradiend_layers(self.adapter_name).values()}
        inner = getattr(optimizer, "optimizer", optimizer)
        moved = []
        for group in inner.param_groups:
            keep = [p for p in group["params"] if id(p) not in encoders]
            moved += [p for p in group["params"] if id(p) in encoders]
            group["params"] = keep
        if moved:
            reference = inner.param_groups[0]
            inner.add_param_group({"params": moved, "lr": reference["lr"] * factor,
                                   "weight_decay": self.args.weight_decay})
            logger.info("GRADIEND: encoder weights learn at %.3g (learning_rate x %d / %d entries).",
                        reference["lr"] * factor, self.args.encoder_lr_fan_in, self._num_entries)
        return optimizer

    # ------------------------------------------------------------------------------------------------ data
    def _classes(self, dataset) -> list:
        key = id(dataset)
        if key not in self._class_cache:
            self._class_cache[key] = row_classes(dataset)
        return self._class_cache[key]

    def _make_train_sampler(self) -> ClassGroupedBatchSampler:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ClassGroupedBatchSampler(
            self._classes(self.train_dataset), self.args.rows_per_gradient, shuffle=True, seed=seed,
            balance=self.args.class_balance, drop_last=self.args.dataloader_drop_last,
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        pin = self.args.dataloader_pin_memory and self.args.device.type == "cuda"  # pinning is for host-to-GPU copies
        kwargs: dict[str, Any] = {"collate_fn": self.data_collator, "num_workers": self.args.dataloader_num_workers,
                                  "pin_memory": pin}
        if self.args.dataloader_num_workers > 0:
            kwargs["persistent_workers"] = self.args.dataloader_persistent_workers
            kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
        return kwargs

    def get_train_dataloader(self) -> DataLoader:
        """Row groups of one class each (`ClassGroupedBatchSampler`), sharded over processes by accelerate."""
        if self.train_dataset is None:
            raise ValueError("GradiendTrainer: training requires a train_dataset.")
        self._train_sampler = self._make_train_sampler()
        loader = DataLoader(self.train_dataset, batch_sampler=self._train_sampler, **self._loader_kwargs())
        return self.accelerator.prepare(loader)

    def _run_epoch(self, *args, **kwargs):
        # the group order depends on the epoch; on resume accelerate's skipping wrapper hides the sampler's
        # set_epoch from the Trainer, so set it here as well
        epoch = kwargs.get("epoch")
        if self._train_sampler is not None and epoch is not None:
            self._train_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, **kwargs)

    def _eval_loader(self, dataset) -> DataLoader:
        """This process's share of the validation row groups (dataset order, one class per group)."""
        sampler = ClassGroupedBatchSampler(self._classes(dataset), self.args.rows_per_gradient, shuffle=False,
                                           balance="none")
        numbered = list(enumerate(sampler.groups(0)))[self.args.process_index :: max(1, self.args.world_size)]
        loader = DataLoader(dataset, batch_sampler=[g for _, g in numbered], **self._loader_kwargs())
        loader.gradiend_groups = numbered
        loader.gradiend_rows = len(dataset)
        return loader

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("GradiendTrainer: evaluation requires an eval_dataset.")
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        else:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        _check_rows(dataset, "eval_dataset")
        return self._eval_loader(dataset)

    def get_test_dataloader(self, test_dataset) -> DataLoader:
        _check_rows(test_dataset, "test_dataset")
        return self._eval_loader(test_dataset)

    # ------------------------------------------------------------------------------------------------ loss
    @contextlib.contextmanager
    def _base_autocast(self):
        """With ``bf16=True``: autocast the base model's forward only (adapter maths stays float32)."""
        if not self.args.bf16:
            yield
            return
        base = self.model.get_base_model()
        forward = base.forward
        device_type = self.args.device.type

        @functools.wraps(forward)
        def autocast_forward(*args, **kwargs):
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                return forward(*args, **kwargs)

        with routed_forward(base, autocast_forward):
            yield

    def _calibration_batch(self, fallback_loader: Optional[DataLoader] = None):
        """The first row group of the first epoch (the same on every process)."""
        if self.train_dataset is not None:
            rows = self._make_train_sampler().groups(0)[0]
            if self.args.per_example:
                rows = rows[:1]
            return self._prepare_inputs(self.data_collator([self.train_dataset[i] for i in rows]))
        if fallback_loader is not None and getattr(fallback_loader, "gradiend_groups", None):
            dataset = fallback_loader.dataset
            groups = ClassGroupedBatchSampler(self._classes(dataset), self.args.rows_per_gradient,
                                              shuffle=False, balance="none").groups(0)
            return self._prepare_inputs(self.data_collator([dataset[i] for i in groups[0]]))
        return None

    def _ensure_calibrated(self, fallback_loader: Optional[DataLoader] = None) -> None:
        """Calibrates the gradient scale on the first training group before anything else uses it, identically on
        every process (the core would otherwise calibrate on whatever batch comes first)."""
        tuner, name = self.tuner, self.adapter_name
        config = tuner.peft_config[name]
        if not config.normalize_gradients or float(tuner.gradiend_gradient_scale[name]) > 0:
            return
        batch = self._calibration_batch(fallback_loader)
        if batch is None:
            return
        with self._base_autocast():
            gradients = batch_gradients(tuner, batch, [config.source])[config.source]
        scale = tuner.calibrate_gradient_scale(gradients, name)
        logger.info("GRADIEND: gradient scale calibrated to %.4g (1 / RMS of the first row group's %s gradient).",
                    scale, config.source)

    def _gradiend_forward(self, **batch):
        tuner, name = self.tuner, self.adapter_name
        with self._base_autocast():
            if self.args.per_example:
                loss, latent, n = per_example_reconstruction_loss(tuner, batch, name)
            else:
                loss, latent, n = tuner.reconstruction_loss(batch, name)
        self._num_entries = n
        return {"loss": loss, "latent": latent.detach()}

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The GRADIEND loss of one row group, summed over the adapter's entries (see the module docstring).

        ``model`` may be the PeftModel or its DDP wrapper; the call goes through ``model(...)`` either way.
        """
        self._ensure_calibrated()
        with routed_forward(self.model, self._gradiend_forward):
            outputs = model(**inputs)
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step (backward on the summed loss); returns the mean squared error for logging.

        Non-finite base-model gradients or a non-finite loss stop training with the step (and the module) named;
        checkpoints already written stay as they are, so the run can resume from the last good one.
        """
        step = self.state.global_step
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except NonFiniteGradientError as err:
            raise NonFiniteGradientError(f"Training stopped at step {step}: {err} {self._last_checkpoint_hint()}") from err
        if not torch.isfinite(loss).all():
            raise NonFiniteGradientError(
                f"Training stopped at step {step}: the GRADIEND loss is {float(loss)} (the adapter diverged; lower "
                f"learning_rate). {self._last_checkpoint_hint()}"
            )
        return loss / self._num_entries

    def _last_checkpoint_hint(self) -> str:
        folder = self.args.output_dir
        last = last_complete_checkpoint(folder, set_aside_incomplete=False)
        if last is None:
            return "No checkpoint was written before this step."
        return f"The last good checkpoint is {last}; resume with trainer.train(resume_from_checkpoint=True)."

    # ---------------------------------------------------------------------------------------- evaluation
    def _class_names(self) -> dict[float, str]:
        config = self.tuner.peft_config[self.adapter_name]
        if not config.class_signs:
            return {1.0: "positive", -1.0: "negative"}
        return {float(sign): _safe_name(name) for name, sign in config.class_signs.items()}

    def _first_class_sign(self) -> float:
        """The encoding sign of the class that mined rows label +1 (``feature_classes[0]``)."""
        config = self.tuner.peft_config[self.adapter_name]
        if not config.class_signs or not config.feature_classes:
            return 1.0
        return float(config.class_signs[config.feature_classes[0]])

    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: Optional[bool] = None,
                        ignore_keys=None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """Encodes every row (one backward pass per group) and computes the encoder metrics; with
        ``compute_eval_loss`` also the groups' reconstruction MSE. Processes split the groups and gather."""
        if not hasattr(dataloader, "gradiend_groups"):
            raise TypeError("GradiendTrainer evaluates with the loaders of get_eval_dataloader/get_test_dataloader.")
        from accelerate.utils import gather_object

        self._ensure_calibrated(dataloader)
        tuner, name = self.tuner, self.adapter_name
        config = tuner.peft_config[name]
        self.callback_handler.eval_dataloader = dataloader  # the progress bar reads its length
        logger.info("***** Running %s *****", description)
        logger.info("  Num rows = %d, row groups = %d", dataloader.gradiend_rows, len(dataloader.gradiend_groups))
        records = []
        for (group, indices), batch in zip(dataloader.gradiend_groups, dataloader):
            batch = self._prepare_inputs(batch)
            with torch.enable_grad(), self._base_autocast():  # gradients are GRADIEND's input, also here
                encodings = tuner.encode_rows(batch, name).detach().float().cpu()
                mse = None
                if self.args.compute_eval_loss:
                    loss, _, n = tuner.reconstruction_loss(batch, name)
                    mse = float(loss.detach()) / n
            records.append((group, list(indices), encodings.tolist(), batch["label"].float().cpu().tolist(), mse))
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        if self.args.world_size > 1:
            records = gather_object(records)
        records.sort(key=lambda record: record[0])
        indices = [i for record in records for i in record[1]]
        encodings = torch.tensor([e for record in records for e in record[2]], dtype=torch.float64)
        labels = torch.tensor([l for record in records for l in record[3]], dtype=torch.float64)
        if encodings.numel() == 0:
            raise ValueError("The evaluation dataset is empty.")
        metrics = encoding_metrics(encodings[:, 0], expected_signs(labels, config.source, self._first_class_sign()),
                                   self._class_names())
        losses = [record[4] for record in records if record[4] is not None]
        if losses:
            metrics["loss"] = float(np.mean(losses))
        order = np.argsort(np.asarray(indices), kind="stable")
        predictions = encodings.numpy()[order]
        label_ids = labels.numpy()[order]
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in metrics.items()}
        return EvalLoopOutput(predictions=predictions, label_ids=label_ids, metrics=metrics,
                              num_samples=len(indices))

    # ------------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trains the adapter (several attempts with ``num_seeds > 1`` until one converges; see `seeds`).

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*): A checkpoint folder, or ``True`` for the last one
                in ``output_dir``: training continues exactly where it stopped (adapter, optimizer, data order,
                best adapter so far).
        """
        if len(self.args.seed_list) > 1:
            from .seeds import train_attempts

            return train_attempts(self, resume_from_checkpoint, trial=trial,
                                  ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        return self._train_once(resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                                **kwargs)

    def end_training(self) -> bool:
        """Ends a multi-process run: waits for every process, releases the DDP wrapper and destroys the process group.

        Call it once at the end of a script launched with ``accelerate launch`` / ``torchrun``, after the main process
        has saved what it needs. The trainer cannot train or evaluate across processes afterwards. In a single
        process it does nothing. See `gradiend_peft.training.distributed` for why the order matters.

        Returns:
            `bool`: ``True`` when a process group was destroyed.
        """
        return end_distributed_training(self)

    def _train_once(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir ({self.args.output_dir}) to resume from.")
        if resume_from_checkpoint is not None:
            _check_checkpoint_fits(resume_from_checkpoint, self.tuner.peft_config[self.adapter_name],
                                   self.adapter_name)
        self._signs.reset()
        self._best.reset()
        if resume_from_checkpoint is not None and not self._best.load(resume_from_checkpoint):
            logger.warning("Checkpoint %s holds no GRADIEND best-adapter record; the best adapter is tracked from "
                           "here on.", resume_from_checkpoint)
        # the start-of-training evaluation is the untrained adapter's; a resumed run has it in its history already
        eval_on_start = self.args.eval_on_start
        if resume_from_checkpoint is not None:
            self.args.eval_on_start = False
        try:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.args.eval_on_start = eval_on_start
        self.training_summary = self._convergence.summary
        return output


# ------------------------------------------------------------------------------------------------ checks
def _first(eval_dataset):
    if isinstance(eval_dataset, dict):
        return next(iter(eval_dataset.values()), None)
    return eval_dataset


def _check_rows(dataset, what: str = "dataset", collator=None) -> None:
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


def _check_checkpoint_fits(checkpoint: str, config, adapter: str) -> None:
    """Refuses to resume from a checkpoint whose adapter is not this GRADIEND adapter (another PEFT method, other
    target modules, latent size or pruning), naming the mismatch, before any state is restored."""
    import json

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
    if saved.get("peft_type") != "GRADIEND":
        problems.append(f"it holds a {saved.get('peft_type')} adapter, not a GRADIEND one")
    else:
        for key in ("target_shapes", "latent_dim", "kept_entries", "decoder_bias", "source", "target"):
            if saved.get(key) != getattr(config, key):
                ours, theirs = getattr(config, key), saved.get(key)
                if isinstance(ours, dict) and isinstance(theirs, dict):
                    differ = sorted(set(ours) ^ set(theirs)) or sorted(k for k in ours if ours[k] != theirs.get(k))
                    problems.append(f"its {key} differ (e.g. {differ[:3]})")
                else:
                    problems.append(f"its {key} is {theirs!r}, this adapter's is {ours!r}")
    if problems:
        raise ValueError(
            f"Cannot resume from {checkpoint!r}: {'; '.join(problems)}. Resume only from checkpoints of the same "
            "GRADIEND configuration (or start a new run in another output_dir)."
        )


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


def _prepare_feature_classes(config, dataset) -> None:
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


def _check_trainable(model, tuner, adapter: str) -> None:
    own = {id(p) for p in _adapter_parameters(tuner, adapter)}
    stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in own]
    if stray:
        raise ValueError(
            f"GradiendTrainer trains only the GRADIEND adapter {adapter!r}, but other parameters require grad: "
            f"{stray[:5]}. Freeze them (e.g. model.base_model.set_requires_grad or param.requires_grad_(False))."
        )
    if not any(p.requires_grad for p in _adapter_parameters(tuner, adapter)):
        raise ValueError(f"Adapter {adapter!r} is not trainable; load it with is_trainable=True.")


def _adapter_parameters(tuner, adapter: str) -> list[torch.nn.Parameter]:
    params = [tuner.gradiend_encoder_bias[adapter]]
    for layer in tuner.gradiend_layers(adapter).values():
        params += [layer.gradiend_encoder[adapter], layer.gradiend_decoder[adapter]]
        if adapter in layer.gradiend_decoder_bias:
            params.append(layer.gradiend_decoder_bias[adapter])
    return params


def _check_precision(model, tuner, adapter: str, args: GradiendTrainingArguments) -> None:
    half = (torch.float16, torch.bfloat16)
    low = sorted({str(p.dtype) for p in _adapter_parameters(tuner, adapter) if p.dtype in half})
    if low:
        raise ValueError(
            f"The GRADIEND adapter {adapter!r} is in {low}; it must train in float32 (its loss sums millions of "
            "entries). A half-precision adapter comes from autocast_adapter_dtype=False (get_peft_model, add_adapter, "
            "PeftModel.from_pretrained, load_adapter), which stores the adapter in the base weights' dtype: create or "
            "load it with autocast_adapter_dtype=True (the default: float32 adapter, the base model may stay "
            "bf16/fp16), or cast the adapter parameters to float32."
        )
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
