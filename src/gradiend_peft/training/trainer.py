"""`GradiendTrainer`: transformers' `Trainer` (accelerate underneath) training a GRADIEND adapter.

What the Trainer gives for free: devices, gradient accumulation, checkpoints and resume, logging integrations,
progress bars, callbacks, the evaluation loop and its gathering across processes. What this subclass changes, each
through a public hook of the Trainer:

- **Data** (`get_train_dataloader`, `get_eval_dataloader`, `get_test_dataloader`): a `datasets.Dataset` of rows
  (``text`` with one ``[MASK]``, ``factual``, ``alternative``, ``factual_class``, ``label``) and a collator (default
  ``collator_for(tokenizer, config.objective)``); batches are row groups of a single class
  (`ClassGroupedBatchSampler`), padded to their longest row by the collator.
- **Loss** (`compute_loss`): one row group is one GRADIEND sample, `gradiend_peft.objective.reconstruction_loss` (or
  every row its own sample, `per_example_reconstruction_loss`, with ``per_example=True``). The optimised loss is the
  *sum* of squared errors over the ``n`` adapter entries, with gradients brought to unit RMS by the adapter's
  calibrated gradient scale: a mean over ``n`` would give the adapter gradients of order ``1/n`` (1e-11 on a 135M
  model), below AdamW's ``eps``, and nothing would train. The *logged* loss is that sum divided by ``n``, the mean
  squared error, which is comparable across model sizes.
- **Gradient accumulation**: every row group is one sample, so accumulated steps average the groups' losses
  (``model_accepts_loss_kwargs = False``: the Trainer divides by the number of accumulated groups).
- **Several processes** (`training_step`): the objective is not a forward pass of the model, so DDP's forward does
  not apply; at the end of each accumulation cycle the adapter's gradients are averaged over the processes (one
  all-reduce per step), as DDP would. ``N`` processes equal one process with ``N`` times the accumulation.
- **Evaluation** (`prediction_step`, `compute_metrics`): the Trainer's own loop. Each row is encoded on its own (one
  backward pass per row group, under ``torch.enable_grad()``); the predictions are the encodings (and the group's
  reconstruction MSE with ``compute_eval_loss``), the label ids the rows' indices; the metrics are
  ``eval_correlation``, ``eval_abs_correlation``, ``eval_accuracy``, ``eval_mean_<class>``, ``eval_std_<class>``,
  ``eval_rows`` and ``eval_loss`` (`gradiend_peft.objective.encoding_metrics`). ``predict`` returns the row
  encodings in dataset order.
- **Mixed precision**: the adapter trains in float32; ``bf16=True`` autocasts only the base model's forward pass (and so
  its backward), never the adapter's sums over millions of entries. A bf16-stored base works as well; a bf16/fp16-stored
  adapter trains as float32 masters, rounded back once at the end; checkpoints carry the masters beside the rounded
  adapter, so resuming is exact (`gradiend_peft.training.precision`).
- **Callbacks**: sign normalisation, best adapter, convergence verdict and history (see `callbacks`), then the
  user's callbacks.
- **Module sharding** (``adapter_shards=P > 1``): ``GradiendTrainer(...)`` builds a `ShardedGradiendTrainer`, where
  each process holds ``1/P`` of the adapter's modules (see `gradiend_peft.training.sharded_trainer`); with
  ``adapter_shards=1`` no sharding code is installed or called.

``train()`` trains once. Several attempts with other seeds are `gradiend_peft.training.train_with_restarts`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import EvalPrediction, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, PredictionOutput

from ..objective import (
    NonFiniteGradientError,
    calibrate,
    encode_rows,
    encoding_metrics,
    expected_sign,
    max_positions,
    per_example_reconstruction_loss,
    reconstruction_loss,
)
from ..tuner.model import GradiendModel, tuner_of
from .arguments import GradiendTrainingArguments
from .callbacks import BestAdapterCallback, ConvergenceCallback, ResumePointsCallback, SignNormalizationCallback
from .checkpoints import last_complete_checkpoint
from .checks import (
    check_checkpoint_fits,
    check_checkpoint_unfinished,
    check_precision,
    check_rows,
    check_trainable,
    check_trainer_arguments,
    claim_output_dir,
    first_dataset,
    prepare_feature_classes,
)
from .distributed import average_gradients, end_distributed_training
from .precision import float32_masters, load_masters, save_masters, stored_precision
from .sampler import ROW_INDEX, ClassGroupedBatchSampler, IndexedCollator, each_row_once, row_classes
from .sharded_trainer import ShardedTraining

logger = logging.getLogger(__name__)


class GradiendTrainer(Trainer):
    """Trains a GRADIEND adapter with transformers' `Trainer` (see the module docstring for what differs).

    Args:
        model (`peft.PeftModel`): A model from ``get_peft_model(base, GradiendConfig(...))``; its active adapter is
            trained, nothing else.
        args (`GradiendTrainingArguments`, *optional*): Training arguments (defaults: the reference's).
        data_collator (`Callable`, *optional*): Turns a list of rows into a batch; default
            ``gradiend_peft.data.collator_for(processing_class, config.objective, max_length=<the model's positions>)``.
        train_dataset (`datasets.Dataset`, *optional*): Training rows (``mine_pairs(...)["train"]``).
        eval_dataset (`datasets.Dataset` or `dict`, *optional*): Validation rows, needed with an ``eval_strategy``.
        processing_class (tokenizer, *optional*): The tokenizer (for the default collator; saved with checkpoints).
        callbacks (`list[TrainerCallback]`, *optional*): Any transformers callbacks; they run after GRADIEND's.
        optimizers (`tuple`, *optional*, defaults to ``(None, None)``): An ``(optimizer, lr_scheduler)`` pair to use
            instead of the default ones, as for `Trainer`.
        optimizer_cls_and_kwargs (`tuple[type[torch.optim.Optimizer], dict]`, *optional*): An optimizer class and
            its keyword arguments, as for `Trainer` (passed through ``**kwargs``).

    After ``train()``: ``trainer.training_summary`` holds the convergence verdict (also written to
    ``output_dir/<history_file>``; ``save_adapter(model, folder, training_summary=...)`` stores it with the adapter).
    With ``args.adapter_shards > 1`` the trainer built is a `ShardedGradiendTrainer`.
    """

    _shard = None  # the objective's shard (`gradiend_peft.objective.sharded.Shard`): None, the whole adapter here
    _checkpoints_hold_masters = False  # a checkpoint's adapter file holds the rounded half-precision values

    def __new__(cls, *args: Any, **kwargs: Any) -> "GradiendTrainer":
        arguments = kwargs.get("args", args[1] if len(args) > 1 else None)
        if cls is GradiendTrainer and getattr(arguments, "adapter_shards", 1) > 1:
            cls = ShardedGradiendTrainer  # the sharding code is installed only for a sharded run
        return super().__new__(cls)

    def __init__(self, model=None, args: Optional[GradiendTrainingArguments] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, callbacks=None,
                 optimizers=(None, None), **kwargs) -> None:
        args, kwargs = check_trainer_arguments(model, args, eval_dataset, kwargs)
        tuner = tuner_of(model)
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
        tuner.check_unmerged("Training")
        eval_sets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        for dataset, what in [(train_dataset, "train_dataset"), *((d, "eval_dataset") for d in eval_sets)]:
            check_rows(dataset, what, data_collator)
        prepare_feature_classes(config, train_dataset if train_dataset is not None else first_dataset(eval_dataset))
        check_trainable(model, tuner, adapter)
        check_precision(model, tuner, adapter, args)

        prefix = "eval" if not isinstance(eval_dataset, dict) else f"eval_{next(iter(eval_dataset))}"
        if isinstance(eval_dataset, dict) and args.metric_for_best_model in ("abs_correlation", "eval_abs_correlation"):
            # several validation sets: the first one decides (best adapter, convergence, early stopping)
            args.metric_for_best_model = f"{prefix}_abs_correlation"
        self._signs = SignNormalizationCallback(threshold=args.sign_flip_below, metric_prefix=prefix)
        self._best = BestAdapterCallback(metric_prefix=prefix, restore=args.restore_best_adapter)
        self._convergence = ConvergenceCallback(self._best, list(config.feature_classes or []), metric_prefix=prefix)
        own = [self._signs] if args.sign_normalization else []
        own += [self._best, self._convergence, ResumePointsCallback(self)]
        self.user_callbacks = list(callbacks or [])
        self.init_kwargs = dict(kwargs)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         callbacks=own + self.user_callbacks, optimizers=optimizers, **kwargs)
        self.model_accepts_loss_kwargs = False  # never pass num_items_in_batch: one row group is one sample
        self.compute_metrics = self._encoder_metrics
        self._num_entries = tuner.num_entries(adapter)
        self._train_sampler: Optional[ClassGroupedBatchSampler] = None
        self._class_cache: dict[int, list] = {}
        self._metric_rows = None  # the rows of the evaluation in progress (compute_metrics reads their classes)
        self.training_summary: Optional[dict] = None  # the convergence verdict of the last train()
        self._storage_dtypes: dict[str, torch.dtype] = {}  # while training a half-precision adapter's masters
        self._resuming: Optional[str] = None  # the checkpoint train() resumes from

    # ----------------------------------------------------------------------------------------- accessors
    @property
    def tuner(self) -> GradiendModel:
        return self.model.base_model

    @property
    def adapter_name(self) -> str:
        return self.model.active_adapter

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """``torch.bfloat16`` with ``bf16=True`` (the base model's forward runs under autocast), else ``None``."""
        return torch.bfloat16 if self.args.bf16 else None

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
        kwargs: dict[str, Any] = {"num_workers": self.args.dataloader_num_workers, "pin_memory": pin}
        if self.args.dataloader_num_workers > 0:
            kwargs["persistent_workers"] = self.args.dataloader_persistent_workers
            kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
        return kwargs

    def get_train_dataloader(self) -> DataLoader:
        """Row groups of one class each (`ClassGroupedBatchSampler`), sharded over processes by accelerate."""
        if self.train_dataset is None:
            raise ValueError("GradiendTrainer: training requires a train_dataset.")
        self._train_sampler = self._make_train_sampler()
        loader = DataLoader(self.train_dataset, batch_sampler=self._train_sampler, collate_fn=self.data_collator,
                            **self._loader_kwargs())
        return self._prepare_loader(loader)

    def _prepare_loader(self, loader):
        return self.accelerator.prepare(loader)

    def _eval_loader(self, dataset, what: str) -> DataLoader:
        """Class-pure row groups in dataset order, each row carrying its index; sharded over processes."""
        check_rows(dataset, what)
        self._metric_rows = dataset
        indexed = dataset.add_column(ROW_INDEX, list(range(len(dataset))))
        sampler = ClassGroupedBatchSampler(self._classes(dataset), self.args.rows_per_gradient, shuffle=False,
                                           balance="none")
        loader = DataLoader(indexed, batch_sampler=sampler.groups(0), collate_fn=IndexedCollator(self.data_collator),
                            **self._loader_kwargs())
        return self._prepare_loader(loader)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("GradiendTrainer: evaluation requires an eval_dataset.")
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        else:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._eval_loader(dataset, "eval_dataset")

    def get_test_dataloader(self, test_dataset) -> DataLoader:
        return self._eval_loader(test_dataset, "test_dataset")

    # ------------------------------------------------------------------------------------------------ loss
    def _calibration_batch(self, dataset=None):
        """The first row group of the first epoch of the training rows (else of ``dataset``): the same everywhere."""
        dataset = self.train_dataset if self.train_dataset is not None else dataset
        if dataset is None:
            return None
        shuffle = dataset is self.train_dataset
        sampler = self._make_train_sampler() if shuffle else ClassGroupedBatchSampler(
            self._classes(dataset), self.args.rows_per_gradient, shuffle=False, balance="none")
        rows = sampler.groups(0)[0]
        if self.args.per_example:
            rows = rows[:1]
        return self._prepare_inputs(self.data_collator([dataset[i] for i in rows]))

    def _ensure_calibrated(self, dataset=None) -> None:
        """Calibrates the gradient scale on the first training group before anything else uses it, identically on
        every process (the objective would otherwise calibrate on whatever batch comes first)."""
        tuner, name = self.tuner, self.adapter_name
        config = tuner.peft_config[name]
        if not config.normalize_gradients or float(tuner.gradiend_gradient_scale[name]) > 0:
            return
        batch = self._calibration_batch(dataset)
        if batch is None:
            return
        scale = self._calibrate(batch)
        logger.info("GRADIEND: gradient scale calibrated to %.4g (1 / RMS of the first row group's %s gradient).",
                    scale, config.source)

    def _calibrate(self, batch) -> float:
        return calibrate(self.tuner, batch, self.adapter_name, self.autocast_dtype, shard=self._shard)

    def _objective(self, batch, per_example: bool):
        """``(loss, latent, n)`` of a row group: the whole loss, or (sharded) this shard's part of it."""
        objective = per_example_reconstruction_loss if per_example else reconstruction_loss
        return objective(self.tuner, batch, self.adapter_name, self.autocast_dtype, shard=self._shard)

    def _group_mse(self, batch) -> float:
        """The reconstruction MSE of one row group."""
        loss, _, n = self._objective(batch, per_example=False)
        return float(loss.detach()) / n

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The GRADIEND loss of one row group, summed over the adapter's entries (see the module docstring)."""
        self._ensure_calibrated()
        batch = {k: v for k, v in inputs.items() if k != ROW_INDEX}
        loss, latent, n = self._objective(batch, self.args.per_example)
        self._num_entries = n
        return (loss, {"loss": loss, "latent": latent.detach()}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step (backward on the summed loss), then, at the end of an accumulation cycle with several
        processes, the adapter's gradients averaged over them; returns the mean squared error for logging.

        Non-finite base-model gradients or a non-finite loss stop training with the step (and the module) named;
        checkpoints already written stay as they are, so the run can resume from the last good one.
        """
        step = self.state.global_step
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except NonFiniteGradientError as err:
            raise NonFiniteGradientError(f"Training stopped at step {step}: {err} {self._last_checkpoint_hint()}") from err
        return self._after_backward(loss) / self._num_entries

    def _after_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Refuses a non-finite loss; at the end of an accumulation cycle with several processes, averages the
        adapter's gradients over them. Returns the loss to log (times ``n``)."""
        if not torch.isfinite(loss).all():
            raise NonFiniteGradientError(
                f"Training stopped at step {self.state.global_step}: the GRADIEND loss is {float(loss)} (the adapter "
                f"diverged; lower learning_rate). {self._last_checkpoint_hint()}"
            )
        if self.args.world_size > 1 and self.accelerator.sync_gradients:
            average_gradients(self.tuner.adapter_parameters(self.adapter_name))
        return loss

    def _agreed_checkpoint(self, choose) -> Optional[str]:
        """``choose()`` on process 0, the same answer everywhere (checkpoint folders are renamed by one process)."""
        if self.args.world_size == 1:
            return choose()
        answer = [choose() if self.args.process_index == 0 else None]
        torch.distributed.broadcast_object_list(answer, src=0)
        return answer[0]

    def _load_best_record(self, checkpoint: str) -> bool:  # sharded: every shard's record, or none
        return self._best.load(checkpoint)

    def _last_checkpoint_hint(self) -> str:
        last = last_complete_checkpoint(self.args.output_dir, set_aside_incomplete=False)
        if last is None:
            return "No checkpoint was written before this step."
        return f"The last good checkpoint is {last}; resume with trainer.train(resume_from_checkpoint=True)."

    # ---------------------------------------------------------------------------------------- evaluation
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """The Trainer's loop, after calibrating the gradient scale, gathering with plain ``gather``: groups differ
        in size, so accelerate's even-batch truncation does not apply; `compute_metrics` drops the repeated rows."""
        self._ensure_calibrated(self._metric_rows)
        self.gather_function = self.accelerator.gather
        return super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                       ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Encodes every row of a group on its own; predictions ``(B, k + 1)``: the encodings and the group's
        reconstruction MSE (NaN without ``compute_eval_loss``); label ids: the rows' dataset indices."""
        inputs = self._prepare_inputs(inputs)
        index = inputs[ROW_INDEX]
        batch = {k: v for k, v in inputs.items() if k != ROW_INDEX}
        with torch.enable_grad():  # gradients are GRADIEND's input, also here
            encodings = encode_rows(self.tuner, batch, self.adapter_name, self.autocast_dtype, self._shard).double()
            mse = self._group_mse(batch) if self.args.compute_eval_loss else float("nan")
        column = torch.full((encodings.shape[0], 1), mse, dtype=encodings.dtype, device=encodings.device)
        return None, torch.cat([encodings, column], dim=1), index

    def _encoder_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """`encoding_metrics` of the first latent dimension against the rows' expected signs (each row once)."""
        rows = self._metric_rows
        config = self.tuner.peft_config[self.adapter_name]
        indices, predictions = each_row_once(prediction.label_ids, prediction.predictions)
        classes = rows.select_columns([c for c in ("factual_class", "alternative_class", "label", "text")
                                       if c in rows.column_names])
        expected = [expected_sign(classes[int(i)], config.source, config.class_signs) for i in indices]
        names = {float(sign): re.sub(r"\W+", "_", str(name)).strip("_") or "class"
                 for name, sign in (config.class_signs or {}).items()}  # default: positive / negative
        metrics = encoding_metrics(predictions[:, 0], expected, names or None)
        losses = predictions[:, -1]
        if np.isfinite(losses).any():
            metrics["loss"] = float(np.nanmean(losses))
        return metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Encodes ``test_dataset`` row by row: ``predictions`` ``(N, k)`` in dataset order, ``label_ids`` the rows'
        ``label`` column, ``metrics`` as for evaluation."""
        output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        _, predictions = each_row_once(output.label_ids, output.predictions)  # in dataset order
        labels = np.asarray(test_dataset["label"], dtype=np.float64) if "label" in test_dataset.column_names else None
        return PredictionOutput(predictions=predictions[:, :-1], label_ids=labels, metrics=output.metrics)

    # ------------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trains the adapter once (`gradiend_peft.training.train_with_restarts` tries several seeds).

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*): A checkpoint folder, or ``True`` for the last one
                in ``output_dir``: training continues exactly where it stopped (adapter, a half-precision adapter's
                float32 masters, optimizer, data order, best adapter so far, class signs).

        Raises:
            `ValueError`: resuming from a checkpoint of another adapter (another PEFT method, or a GRADIEND
                configuration that computes otherwise: the field is named) or of another ``adapter_shards``; starting
                a new run into an ``output_dir`` that holds another run's checkpoints (resume it, or
                ``overwrite_output_dir=True``).
        """
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:  # one process decides (it renames incomplete checkpoints aside)
            resume_from_checkpoint = self._agreed_checkpoint(lambda: last_complete_checkpoint(self.args.output_dir))
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir ({self.args.output_dir}) to resume from.")
        config = self.tuner.peft_config[self.adapter_name]
        if resume_from_checkpoint is not None:
            saved = check_checkpoint_fits(resume_from_checkpoint, config, self.adapter_name, self.args.adapter_shards)
            check_checkpoint_unfinished(resume_from_checkpoint, self.args.max_steps)
            config.class_signs = saved.get("class_signs") or config.class_signs  # as sign normalisation left them
        elif claim_output_dir(self.args) and self.args.world_size > 1:
            self.accelerator.wait_for_everyone()  # process 0 removed the old checkpoints
        self.tuner.check_unmerged("Training")
        self._signs.reset()
        self._best.reset()
        self.training_summary = None
        if resume_from_checkpoint is not None and not self._load_best_record(resume_from_checkpoint):
            logger.warning("Checkpoint %s holds no GRADIEND best-adapter record; the best adapter is tracked from "
                           "here on.", resume_from_checkpoint)
        # the start-of-training evaluation is the untrained adapter's; a resumed run has it in its history already
        eval_on_start = self.args.eval_on_start
        if resume_from_checkpoint is not None:
            self.args.eval_on_start = False
        self._resuming = resume_from_checkpoint
        try:
            with float32_masters(self.model, self.adapter_name, self.args.seed) as self._storage_dtypes:
                output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                       ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self.args.eval_on_start = eval_on_start
            self._resuming, self._storage_dtypes = None, {}
        self.training_summary = self._convergence.summary
        return output

    def _restore_masters(self) -> None:
        """At the start of a resumed run (after the Trainer loaded the checkpoint's rounded adapter): a half-precision
        adapter's float32 masters from the checkpoint."""
        if self._resuming is None or not self._storage_dtypes or self._checkpoints_hold_masters:
            return
        if not load_masters(self.model, self.adapter_name, self._storage_dtypes, self._resuming):
            logger.warning("Checkpoint %s holds no float32 masters of the half-precision adapter (an older version "
                           "wrote it): training continues from its rounded values, not exactly where it stopped.",
                           self._resuming)

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """The Trainer's save; a half-precision adapter training as float32 masters is saved in its storage dtype, and
        a checkpoint also gets the masters (`gradiend_peft.training.precision.save_masters`)."""
        if state_dict is not None or not self._storage_dtypes:
            return super()._save(output_dir, state_dict=state_dict)
        with stored_precision(self.model, self.adapter_name, self._storage_dtypes, self.args.seed):
            super()._save(output_dir)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and os.path.basename(os.path.normpath(folder)) == \
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}":
            save_masters(self.model, self.adapter_name, self._storage_dtypes, folder)

    def end_training(self) -> bool:
        """Ends a multi-process run: waits for every process, releases the DDP wrapper and destroys the process group.

        Call it once at the end of a script launched with ``accelerate launch`` / ``torchrun``, after the main process
        has saved what it needs. The trainer cannot train or evaluate across processes afterwards. In a single
        process it does nothing. See `gradiend_peft.training.distributed` for why the order matters.

        Returns:
            `bool`: ``True`` when a process group was destroyed.
        """
        return end_distributed_training(self)


class ShardedGradiendTrainer(ShardedTraining, GradiendTrainer):
    """`GradiendTrainer` with ``adapter_shards > 1``: what ``GradiendTrainer(...)`` builds then (module sharding, see
    `gradiend_peft.training.sharded_trainer`)."""
