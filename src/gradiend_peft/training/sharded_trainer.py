"""`GradiendTrainer`'s side of module sharding (``GradiendTrainingArguments(adapter_shards=P)``).

`ShardedTraining` is installed only for ``P > 1``: ``GradiendTrainer(...)`` then builds a
`gradiend_peft.training.trainer.ShardedGradiendTrainer` (``ShardedTraining`` before `GradiendTrainer` in its MRO);
a run with ``adapter_shards=1`` never calls anything here. With ``P > 1`` shards (and ``R = W / P`` data-parallel
replicas, see `gradiend_peft.training.sharding`):

- **Set-up**: the balanced `ShardPlan` is made from the adapter's config, identically on every process; each
  process frees the adapter tensors of the modules other shards hold (`GradiendModel.drop_modules`), before the
  optimizer exists, so the optimizer state is made for this shard only.
- **Data**: the loaders are split over the ``R`` replicas, not over all processes: every process of a shard group
  sees the same row groups in the same order (accelerate's ``prepare_data_loader`` with ``num_processes=R``).
- **Loss**: the objective with ``shard=Shard(shard group)`` (`gradiend_peft.objective.sharded`). After the backward
  pass of the last accumulated group, the encoder bias' gradient is summed over the shard group (with the summed loss,
  so that all agree on a non-finite one), and with ``R > 1`` this shard's gradients are averaged over its replica
  group. The returned loss is
  ``P * loss_p / n``: the Trainer logs the mean over all ``P R`` processes, which is then the whole adapter's
  ``sum_p loss_p / n``, averaged over the replicas.
- **Evaluation**: each row's partial encoder dot products are summed over the shard group (`encode_rows` with the
  shard); the group's loss is the sum of the shards' losses.

Trainer methods overridden, and why (each is private in transformers; there is no public hook for these):

- ``_wrap_model``: accelerate would wrap the model in DDP over all processes, and DDP refuses processes whose
  parameters differ (its start-up check compares shapes). The objective never runs the model's forward, so DDP would
  do nothing else; the model gets a thin wrapper instead, which also tells the Trainer not to hand it to accelerate.
- ``_save``: the Trainer saves from process 0 only; a sharded adapter needs every shard's tensors
  (`gradiend_peft.saving.save_sharded_adapter`, collective and atomic). ``save_model`` calls ``_save`` on every process,
  so ``trainer.save_model(folder)`` works as usual (call it on every process).
- ``_save_optimizer_and_scheduler`` / ``_load_optimizer_and_scheduler``: one optimizer file per shard,
  ``optimizer-shard-00001-of-00002.pt`` (as FSDP writes per-rank optimizer files), then a barrier, so that a checkpoint
  whose ``trainer_state.json`` exists holds every shard's state.
- ``_load_from_checkpoint``: each process loads its own modules' tensors (and the shared ones) from the sharded
  checkpoint.
- ``_get_grad_norm`` / ``_clip_grad_norm``: the logged ``grad_norm`` and gradient clipping (``max_grad_norm``) use the
  whole adapter's norm (its square travels with the encoder bias' gradient), not this shard's.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..atomic import atomic_write_bytes
from ..saving import save_sharded_adapter
from ..tuner.persistence import AdapterFolder, read_adapter
from ..objective import NonFiniteGradientError
from ..objective.sharded import Shard, all_reduce_encoder_bias_grad
from .distributed import average_gradients
from .sharding import ShardLayout, ShardPlan, plan_for

logger = logging.getLogger(__name__)

OPTIMIZER_SHARD_NAME = "optimizer-shard-{index:05d}-of-{count:05d}.pt"
SCHEDULER_NAME = "scheduler.pt"
TRAINING_ARGS_NAME = "training_args.bin"


@dataclass
class Sharding:
    """A sharded run's plan and this process's layout."""

    plan: ShardPlan
    layout: ShardLayout

    @property
    def own_modules(self) -> tuple[str, ...]:
        return self.plan.modules[self.layout.shard]

    def optimizer_file(self) -> str:
        return OPTIMIZER_SHARD_NAME.format(index=self.layout.shard + 1, count=self.layout.shards)


class _ShardHolder(nn.Module):
    """What the Trainer takes for the wrapped model in a sharded run (see the module docstring): no DDP."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class ShardedTraining:
    """`GradiendTrainer`'s module-sharding behaviour (see the module docstring); a base class of
    `ShardedGradiendTrainer` only."""

    _checkpoints_hold_masters = True  # a shard file holds the live (float32 master) tensors

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_sharding()

    def _setup_sharding(self) -> None:
        """Plans the shards, makes the groups and frees the other shards' tensors."""
        shards = self.args.adapter_shards
        self._shard_loss = None
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("adapter_shards > 1 shards the GRADIEND adapter itself; it does not combine with "
                             "DeepSpeed or FSDP (see docs/guides/sharding.md).")
        if self.args.load_best_model_at_end:
            raise ValueError("adapter_shards > 1 does not take load_best_model_at_end=True (the Trainer would load a "
                             "single-file adapter); restore_best_adapter=True (the default) restores every shard's "
                             "best adapter at the end.")
        layout = ShardLayout.create(shards)
        plan = plan_for(self.tuner.peft_config[self.adapter_name], shards)
        freed = self.tuner.drop_modules(self.adapter_name, set(plan.modules[layout.shard]))
        self._sharding = Sharding(plan, layout)
        self._shard = Shard(layout.shard_group)
        self._num_entries = plan.total_entries
        self._best.shard = (layout.shard, shards, layout.writes)
        logger.info("GRADIEND: shard %d of %d (replica %d of %d): %d modules, %d of %d entries; freed %.1f MB of the "
                    "other shards' adapter tensors.", layout.shard + 1, shards, layout.replica + 1, layout.replicas,
                    len(plan.modules[layout.shard]), plan.entries[layout.shard], plan.total_entries, freed / 2**20)

    # ---------------------------------------------------------------------------------------------- data
    def _prepare_loader(self, loader):
        """Split over the replicas only (see the module docstring), not over all processes."""
        from accelerate.data_loader import prepare_data_loader

        layout = self._sharding.layout
        return prepare_data_loader(loader, self.args.device, num_processes=layout.replicas,
                                   process_index=layout.replica, put_on_device=True,
                                   even_batches=self.accelerator.even_batches)

    # ----------------------------------------------------------------------------------------- objective
    def _group_mse(self, batch: Mapping[str, torch.Tensor]) -> float:
        """The reconstruction MSE of one row group (the shards' losses summed)."""
        loss, _, n = self._objective(batch, per_example=False)
        loss = loss.detach().reshape(1)
        torch.distributed.all_reduce(loss, group=self._sharding.layout.shard_group)
        return float(loss) / n

    def _after_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """After a backward pass: accumulate this shard's loss; at the end of an accumulation cycle average this
        shard's gradients over its replicas, then sum the encoder bias' gradient over the shard group, together with
        the losses (so that every process agrees on a non-finite one) and the squared norm of the other gradients
        (for the logged ``grad_norm``: one all-reduce). Returns ``P * loss``."""
        sharding = self._sharding
        self._shard_loss = loss.detach() if self._shard_loss is None else self._shard_loss + loss.detach()
        if self.accelerator.sync_gradients:
            tuner, name = self.tuner, self.adapter_name
            bias = tuner.gradiend_encoder_bias[name]
            params = tuner.adapter_parameters(name)
            if sharding.layout.replicas > 1:
                average_gradients(params, group=sharding.layout.replica_group)
            squares = sum((p.grad.double().pow(2).sum() for p in params if p is not bias and p.grad is not None),
                          torch.zeros((), dtype=torch.float64, device=bias.device))
            extra = torch.stack([self._shard_loss.reshape(()).to(squares), squares]).to(bias.device)
            total = all_reduce_encoder_bias_grad(tuner, name, sharding.layout.shard_group, extra=extra)
            self._shard_loss = None
            self._grad_norm = float((total[1] + bias.grad.double().pow(2).sum()).sqrt())
            if not (bool(torch.isfinite(total).all()) and bool(torch.isfinite(bias.grad).all())):
                raise NonFiniteGradientError(
                    f"Training stopped at step {self.state.global_step}: the GRADIEND loss summed over the shards is "
                    f"{float(total[0])} (the adapter diverged; lower learning_rate). {self._last_checkpoint_hint()}"
                )
        return loss * sharding.layout.shards

    def _load_best_record(self, checkpoint: str) -> bool:
        """Each process reads its shard's best-adapter record; all use theirs only if every shard has one."""
        found = super()._load_best_record(checkpoint)
        if self.args.world_size == 1:
            return found
        flags = [None] * self.args.world_size
        torch.distributed.all_gather_object(flags, found)
        if not all(flags):
            self._best.reset()
            return False
        return True

    # ------------------------------------------------------------------------------- Trainer hooks (private)
    def _get_grad_norm(self, model, grad_norm=None):
        return self._grad_norm  # the whole adapter's, from `_after_backward` (the model's own is this shard's)

    def _clip_grad_norm(self, model):
        coefficient = self.args.max_grad_norm / (self._grad_norm + 1e-6)  # as torch's clip_grad_norm_, on the whole
        if coefficient < 1.0:
            for param in self.tuner.adapter_parameters(self.adapter_name):
                if param.grad is not None:
                    param.grad.mul_(coefficient)
        return self._grad_norm

    def _wrap_model(self, model, training: bool = True, dataloader=None):
        if not training:
            return super()._wrap_model(model, training, dataloader)
        return model if isinstance(model, _ShardHolder) else _ShardHolder(model)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        layout = self._sharding.layout
        save_sharded_adapter(self.model, output_dir, layout.shard, layout.shards, writes=layout.writes)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._sharding.layout.writes:
            buffer = io.BytesIO()
            torch.save(self.optimizer.state_dict(), buffer)
            atomic_write_bytes(os.path.join(output_dir, self._sharding.optimizer_file()), buffer.getvalue())
        if self.args.should_save:
            buffer = io.BytesIO()
            torch.save(self.lr_scheduler.state_dict(), buffer)
            atomic_write_bytes(os.path.join(output_dir, SCHEDULER_NAME), buffer.getvalue())
        torch.distributed.barrier()  # every shard's optimizer file exists before trainer_state.json is written

    def _load_optimizer_and_scheduler(self, checkpoint: Optional[str]) -> None:
        if checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        from transformers.utils import check_torch_load_is_safe

        path = os.path.join(checkpoint, self._sharding.optimizer_file())
        if not os.path.isfile(path):
            raise ValueError(f"Cannot resume from {checkpoint!r}: it holds no {os.path.basename(path)}. It was written "
                             f"with another number of adapter shards than {self._sharding.layout.shards}, or not by a "
                             "sharded run; resume with the adapter_shards it was trained with.")
        check_torch_load_is_safe()
        location = self.args.device if self.args.device.type != "cpu" else "cpu"
        self.optimizer.load_state_dict(torch.load(path, map_location=location, weights_only=True))
        scheduler = os.path.join(checkpoint, SCHEDULER_NAME)
        if os.path.isfile(scheduler):
            self.lr_scheduler.load_state_dict(torch.load(scheduler, map_location="cpu", weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        name = self.adapter_name
        folder = resume_from_checkpoint if name == "default" else os.path.join(resume_from_checkpoint, name)
        own = self.tuner.adapter_state_dict(name, shared=True)
        _, loaded = read_adapter(AdapterFolder(folder, True), names=set(own))  # checked as any adapter's files
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(loaded[key].to(tensor.device, tensor.dtype))
        logger.info("GRADIEND: shard %d loaded %d tensors from %s.", self._sharding.layout.shard + 1, len(own),
                    resume_from_checkpoint)
