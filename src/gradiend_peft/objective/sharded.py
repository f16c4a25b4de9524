"""The collective pieces of module sharding: the GRADIEND objective (`gradiend_peft.objective.losses`,
`gradiend_peft.objective.encoding`) with the adapter's target modules split over processes, through a `Shard`.

Every quantity of the objective is a sum over target modules ``m``:

    h    = act(s * sum_m <E_m, g_m> + b_e)                 (one k-vector for the whole adapter)
    loss = sum_m ||d_m(h) - s * t_m||^2,   d_m(h) = D_m h + c_m

With the modules split over the ``P`` processes of a *shard group* (process ``p`` holds ``E_m``, ``D_m``, ``c_m``
for its modules ``M_p`` only, and a copy of ``b_e`` and ``s``), each process computes the base model's gradients
``g_m``, ``t_m`` of the SAME row group for its own modules, then

    partial_p = sum_{m in M_p} <E_m, g_m>                   (k numbers)
    h         = act(s * all_reduce(partial_p) + b_e)        (the same h on every process)
    loss_p    = sum_{m in M_p} ||d_m(h) - s * t_m||^2       (loss = sum_p loss_p)

The objective's functions take ``shard=Shard(group)`` and compute each process's partial sums over its own
modules; `Shard.sum` all-reduces them. Backward: ``all_reduce`` is differentiable (`all_reduce_sum`); its backward
is again a sum over the processes, so ``dloss/dh = sum_p dloss_p/dh`` reaches every process and each ``E_m`` gets its
exact gradient. ``D_m`` and ``c_m`` appear in ``loss_p`` only. The replicated ``b_e`` gets ``dloss_p/db_e`` on
process ``p``; its gradient is the sum over the processes (`all_reduce_encoder_bias_grad`, once per optimizer step).
The gradient scale ``s`` is ``1 / RMS`` over all ``n`` entries: each process sums the squares and counts the entries
of its modules and one all-reduce of those two numbers gives the totals (`moments_reducer`, `Shard.calibrate`).

Per step: one all-reduce of ``k`` numbers forward, one of ``k`` backward, one of ``k + 1`` for the encoder bias'
gradient (and the summed loss, so that every process agrees on a non-finite one). A process whose base-model
gradients are non-finite sends NaN instead of raising on its own, so that every process raises together instead of
waiting forever for the others (`agree`).

Nothing here knows how the modules were assigned or how groups were made: `gradiend_peft.training.sharding` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist

from .gradients import NonFiniteGradientError

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel

__all__ = ["Shard", "agree", "all_reduce_encoder_bias_grad", "all_reduce_sum", "moments_reducer"]


class _AllReduceSum(torch.autograd.Function):
    """``sum_p x_p`` over a process group, with the same sum as its backward (``d(sum_q x_q)/dx_p = 1``, so the
    gradient reaching ``x_p`` is the sum of the gradients that every process's output received).

    The same as ``torch.distributed.nn.functional.all_reduce``, which torch deprecates with a warning on every
    call; written here so that the objective calls ``torch.distributed.all_reduce`` and nothing else.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        return _AllReduceSum.apply(grad_output, ctx.group), None


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum of ``tensor`` over the processes of ``group`` (default: all), differentiable (see `_AllReduceSum`)."""
    return _AllReduceSum.apply(tensor, group)


def moments_reducer(group: Any = None, device: Any = "cpu") -> Callable[[float, int], tuple[float, int]]:
    """A ``reduce_moments`` for `GradiendModel.calibrate_gradient_scale`: one float64 all-reduce of
    ``(sum of squares, entry count)`` over ``group`` (a tensor on ``device``: the adapter's, which the process
    group's backend must reach).

    Raises:
        `NonFiniteGradientError`: on every process, when any process's sum is not finite.
    """

    def reduce(squares: float, count: int) -> tuple[float, int]:
        totals = torch.tensor([squares, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
        if not bool(torch.isfinite(totals).all()):
            raise NonFiniteGradientError("A process of the shard group has non-finite base-model gradients; the "
                                         "gradient scale cannot be calibrated on this row group.")
        return float(totals[0]), int(round(float(totals[1])))

    return reduce


def agree(total: torch.Tensor, failure: Optional[Exception], what: str) -> None:
    """Raises on every process when the all-reduced ``total`` is not finite (some process sent NaN): this process's
    own ``failure`` if it had one (it names the module), else a `NonFiniteGradientError` naming ``what``."""
    if failure is not None:
        raise failure
    if not bool(torch.isfinite(total).all()):
        raise NonFiniteGradientError(f"{what} is not finite: another process of the shard group has non-finite "
                                     "base-model gradients (its own error names the module).")


@dataclass(frozen=True)
class Shard:
    """This process's share of a module-sharded adapter, as the objective sees it: the target modules the tuner holds
    (the others were dropped, `GradiendModel.drop_modules`) and ``group``, the processes that hold the rest.

    Pass it as ``shard=`` to `gradiend_peft.objective.reconstruction_loss`, `per_example_reconstruction_loss`,
    `encode_rows` and `calibrate`; without one (``None``) they compute over the whole adapter and call nothing here.

    Attributes:
        group (`ProcessGroup`, *optional*): The processes that together hold the whole adapter (default: all).
    """

    group: Any = None

    def sum(self, partial: torch.Tensor, failure: Optional[Exception], what: str) -> torch.Tensor:
        """``partial`` (NaN where this process's gradients failed, ``failure``) summed over the group,
        differentiably; raises on every process when any process failed (`agree`)."""
        total = all_reduce_sum(partial, self.group)
        agree(total.detach(), failure, what)
        return total

    def calibrate(self, tuner: "GradiendModel", adapter_name: str, gradients: Optional[Mapping[str, torch.Tensor]],
                  failure: Optional[Exception]) -> None:
        """Calibrates the gradient scale over the group's entries (`moments_reducer`); a process without
        ``gradients`` (its own had ``failure``) takes part with NaN, so that every process raises together."""
        reduce = moments_reducer(self.group, tuner.gradiend_encoder_bias[adapter_name].device)
        try:
            if gradients is None:
                reduce(math.nan, 0)
            else:
                tuner.calibrate_gradient_scale(gradients, adapter_name, reduce_moments=reduce)
        except NonFiniteGradientError:
            if failure is not None:
                raise failure from None
            raise


@torch.no_grad()
def all_reduce_encoder_bias_grad(tuner: "GradiendModel", adapter_name: str, group: Any = None,
                                 extra: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Sums the replicated encoder bias' gradient over ``group`` in place (each process holds only its modules'
    part of ``dloss/db_e``); ``extra`` numbers (e.g. this process's loss) travel in the same all-reduce and come
    back summed.

    Returns:
        `torch.Tensor` or `None`: the summed ``extra``.
    """
    bias = tuner.gradiend_encoder_bias[adapter_name]
    grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
    dtype = torch.promote_types(grad.dtype, extra.dtype) if extra is not None else grad.dtype
    parts = [grad.reshape(-1).to(dtype)] + ([extra.reshape(-1).to(dtype)] if extra is not None else [])
    total = torch.cat(parts)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    summed = total[: bias.numel()].view_as(bias).to(grad.dtype)
    if bias.grad is None:
        bias.grad = summed.clone()
    else:
        bias.grad.copy_(summed)
    return total[bias.numel():] if extra is not None else None
