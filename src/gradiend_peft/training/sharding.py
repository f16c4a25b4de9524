"""Module sharding of a GRADIEND adapter over processes: which process holds which target modules (`ShardPlan`), the
process groups (`ShardLayout`); the tuner drops the other processes' modules (`GradiendModel.drop_modules`).

With ``W = P x R`` processes, ``P`` *shards* (each holds about ``1/P`` of the adapter's entries and their optimizer
state) times ``R`` *replicas* (data parallelism: each replica trains on other row groups):

- process ``rank`` holds shard ``rank // R`` as replica ``rank % R``;
- a **shard group** is the ``P`` processes of one replica (ranks ``r, R + r, 2R + r, ...``): together they hold the
  whole adapter, see the same row groups and all-reduce ``k`` numbers per step (the encoder's dot product and the
  encoder bias' gradient, see `gradiend_peft.objective.sharded`);
- a **replica group** is the ``R`` processes holding one shard (ranks ``sR ... sR + R - 1``, consecutive, so usually
  on one machine): they average that shard's gradients (``3n/P`` numbers) once per optimizer step, as data
  parallelism does.

The big collective (the gradient average) stays inside consecutive ranks and the tiny one spans the machines.
The math of the sharded objective is in `gradiend_peft.objective.sharded`; the trainer's side in
`gradiend_peft.training.sharded_trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)

__all__ = ["ShardLayout", "ShardPlan", "adapter_bytes", "plan_for"]


@dataclass(frozen=True)
class ShardPlan:
    """Which shard holds which target modules.

    Attributes:
        modules (`tuple[tuple[str, ...], ...]`): Per shard, its target modules in model order.
        entries (`tuple[int, ...]`): Per shard, its input entries ``n_p`` (``sum_p n_p = n``).
    """

    modules: tuple[tuple[str, ...], ...]
    entries: tuple[int, ...]

    @classmethod
    def balanced(cls, sizes: Mapping[str, int], shards: int) -> "ShardPlan":
        """Greedy largest-first: modules by decreasing entries (model order on ties), each to the shard with the
        fewest entries so far (the lowest index on ties). The same plan on every process.

        Args:
            sizes (`Mapping[str, int]`): Target module -> its entries ``n_m``, in model order.
            shards (`int`): The number of shards ``P``.

        Raises:
            `ValueError`: for fewer modules than shards (a shard would be empty).
        """
        names = list(sizes)
        if shards < 1 or len(names) < shards:
            raise ValueError(f"Cannot split {len(names)} target modules over {shards} shards: every shard needs at "
                             "least one module. Use fewer adapter_shards or target more modules.")
        loads = [0] * shards
        assigned: list[list[int]] = [[] for _ in range(shards)]
        for index in sorted(range(len(names)), key=lambda i: (-int(sizes[names[i]]), i)):
            shard = min(range(shards), key=lambda p: (loads[p], p))
            assigned[shard].append(index)
            loads[shard] += int(sizes[names[index]])
        return cls(tuple(tuple(names[i] for i in sorted(a)) for a in assigned), tuple(loads))

    @property
    def shards(self) -> int:
        return len(self.modules)

    @property
    def total_entries(self) -> int:
        return sum(self.entries)

    def shard_of(self, module: str) -> int:
        for shard, modules in enumerate(self.modules):
            if module in modules:
                return shard
        raise KeyError(f"Module {module!r} is in no shard of the plan.")


def plan_for(config, shards: int) -> ShardPlan:
    """The balanced plan of an adapter from its config (`GradiendConfig.module_entries`)."""
    return ShardPlan.balanced(config.module_entries(), shards)


@dataclass(frozen=True)
class ShardLayout:
    """This process's place among ``P`` shards times ``R`` replicas, and its process groups (see the module docstring).

    Attributes:
        shards (`int`): ``P``.
        replicas (`int`): ``R = W / P``.
        shard (`int`): This process's shard (``rank // R``).
        replica (`int`): This process's replica (``rank % R``).
        shard_group (`ProcessGroup`): The ``P`` processes of this replica (the default group when ``R = 1``).
        replica_group (`ProcessGroup` or `None`): The ``R`` processes of this shard (``None`` when ``R = 1``).
    """

    shards: int
    replicas: int
    shard: int
    replica: int
    shard_group: Any
    replica_group: Any

    @property
    def writes(self) -> bool:
        """Whether this process writes its shard's files (replica 0 of each shard)."""
        return self.replica == 0

    @classmethod
    def create(cls, shards: int) -> "ShardLayout":
        """Makes the groups; every process of the default group must call it, with the same ``shards``.

        Raises:
            `ValueError`: without a process group of a multiple of ``shards`` processes.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                f"adapter_shards={shards} splits the adapter over processes, but this is a single process. Launch "
                f"{shards} (or a multiple of {shards}) processes with accelerate launch or torchrun."
            )
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % shards:
            raise ValueError(f"adapter_shards={shards} does not divide the {world} processes: launch a multiple of "
                             f"{shards} processes (shards x data-parallel replicas).")
        replicas = world // shards
        shard_lists = [[s * replicas + r for s in range(shards)] for r in range(replicas)]
        replica_lists = [[s * replicas + r for r in range(replicas)] for s in range(shards)]
        shard_group = dist.group.WORLD if replicas == 1 else dist.new_subgroups_by_enumeration(shard_lists)[0]
        replica_group = None if replicas == 1 else dist.new_subgroups_by_enumeration(replica_lists)[0]
        return cls(shards, replicas, rank // replicas, rank % replicas, shard_group, replica_group)


def adapter_bytes(parameters, optimizer=None) -> dict[str, int]:
    """Bytes of the given adapter parameters and of the optimizer state held for them (tensors only)."""
    params = list(parameters)
    ids = {id(p) for p in params}
    state = 0
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)
        for param, values in inner.state.items():
            if id(param) in ids:
                state += sum(v.numel() * v.element_size() for v in values.values() if torch.is_tensor(v))
    return {"adapter": sum(p.numel() * p.element_size() for p in params), "optimizer": state}
