"""The GRADIEND objective with the adapter's target modules split over processes (module sharding).

Every quantity of the objective is a sum over target modules ``m``:

    h    = act(s * sum_m <E_m, g_m> + b_e)                 (one k-vector for the whole adapter)
    loss = sum_m ||d_m(h) - s * t_m||^2,   d_m(h) = D_m h + c_m

With the modules split over the ``P`` processes of a *shard group* (process ``p`` holds ``E_m``, ``D_m``, ``c_m``
for its modules ``M_p`` only, and a copy of ``b_e`` and ``s``), each process computes the base model's gradients
``g_m``, ``t_m`` of the SAME row group for its own modules, then

    partial_p = sum_{m in M_p} <E_m, g_m>                   (k numbers)
    h         = act(s * all_reduce(partial_p) + b_e)        (the same h on every process)
    loss_p    = sum_{m in M_p} ||d_m(h) - s * t_m||^2       (loss = sum_p loss_p)

Backward: ``all_reduce`` is differentiable (`all_reduce_sum`); its backward is again a sum over the processes, so
``dloss/dh = sum_p dloss_p/dh`` reaches every process and each ``E_m`` gets its exact gradient. ``D_m`` and ``c_m``
appear in ``loss_p`` only. The replicated ``b_e`` gets ``dloss_p/db_e`` on process ``p``; its gradient is the sum
over the processes (`all_reduce_encoder_bias_grad`, once per optimizer step). The gradient scale ``s`` is
``1 / RMS`` over all ``n`` entries: each process sums the squares and counts the entries of its modules and one
all-reduce of those two numbers gives the totals (`moments_reducer`).

Per step: one all-reduce of ``k`` numbers forward, one of ``k`` backward, one of ``k + 1`` for the encoder bias'
gradient (and the summed loss, so that every process agrees on a non-finite one). A process whose base-model
gradients are non-finite sends NaN instead of raising on its own, so that every process raises together instead of
waiting forever for the others.

Nothing here knows how the modules were assigned or how groups were made: `gradiend_peft.training.sharding` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist

from .gradients import NonFiniteGradientError, batch_gradients, per_example_encoder_dots
from .losses import per_example_losses, per_example_probe_dots

if TYPE_CHECKING:
    from ..tuner.model import GradiendModel

__all__ = [
    "adapter_entries",
    "all_reduce_encoder_bias_grad",
    "all_reduce_sum",
    "moments_reducer",
    "sharded_calibrate",
    "sharded_encode_rows",
    "sharded_per_example_reconstruction_loss",
    "sharded_reconstruction_loss",
]


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


def adapter_entries(config) -> int:
    """The whole adapter's input entries ``n`` from its config (``target_shapes``, ``kept_entries``), whichever
    modules this process holds."""
    kept = config.kept_entries or {}
    return sum(int(kept[m]) if m in kept else math.prod(shape) for m, shape in (config.target_shapes or {}).items())


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


def _agree(total: torch.Tensor, failure: Optional[Exception], what: str) -> None:
    """Raises on every process when the all-reduced ``total`` is not finite (some process sent NaN)."""
    if failure is not None:
        raise failure
    if not bool(torch.isfinite(total).all()):
        raise NonFiniteGradientError(f"{what} is not finite: another process of the shard group has non-finite "
                                     "base-model gradients (its own error names the module).")


def _calibrate(tuner: "GradiendModel", name: str, gradients: Optional[Mapping[str, torch.Tensor]], group: Any,
               failure: Optional[Exception]) -> None:
    """Calibrates the gradient scale over the shard group if not done yet; a process without ``gradients`` (its own
    had ``failure``) takes part with NaN, so that every process raises together."""
    config = tuner.peft_config[name]
    if not config.normalize_gradients or float(tuner.gradiend_gradient_scale[name]) > 0:
        return
    reduce = moments_reducer(group, tuner.gradiend_encoder_bias[name].device)
    try:
        if gradients is None:
            reduce(math.nan, 0)
        else:
            tuner.calibrate_gradient_scale(gradients, name, reduce_moments=reduce)
    except NonFiniteGradientError:
        if failure is not None:
            raise failure from None
        raise


def sharded_calibrate(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], group: Any = None,
                      adapter_name: Optional[str] = None, autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Calibrates the gradient scale ``s = 1 / RMS`` on a row group's ``source`` gradient over ALL the adapter's
    entries (each process its own modules', one all-reduce of two numbers), if not done yet; returns ``s``. Every
    process of ``group`` must call it with the same row group."""
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    if config.normalize_gradients and not float(tuner.gradiend_gradient_scale[name]) > 0:
        own = list(tuner.gradiend_layers(name))
        try:
            grads, failure = batch_gradients(tuner, batch, [config.source], autocast_dtype, own)[config.source], None
        except NonFiniteGradientError as err:
            grads, failure = None, err
        _calibrate(tuner, name, grads, group, failure)
    return tuner.gradient_scale(name)


def sharded_reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], group: Any = None, adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`gradiend_peft.objective.reconstruction_loss` of one row group, for this process's share of the modules.

    Every process of ``group`` must call it with the same row group. Calibrates the gradient scale (over all the
    processes' entries) if that has not happened yet.

    Args:
        tuner (`GradiendModel`): The tuner, holding this process's modules of the adapter.
        batch (`Mapping[str, torch.Tensor]`): A collated row group (the same on every process of ``group``).
        group (`ProcessGroup`, *optional*): The processes that together hold the whole adapter (default: all).
        adapter_name (`str`, *optional*): The adapter (default: the active one).
        autocast_dtype (`torch.dtype`, *optional*): Mixed precision for the base model's forward pass.

    Returns:
        `tuple`: ``(loss_p, h, n)``: this process's part of the summed squared error (the whole loss is the sum over
        the processes; differentiable, and its backward reaches the other processes' encoders through the
        all-reduce), the latent ``h`` (``(k,)``, the same everywhere) and the whole adapter's entries ``n``.
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    own = list(tuner.gradiend_layers(name))
    try:
        grads, failure = batch_gradients(tuner, batch, [config.source, config.target], autocast_dtype, own), None
    except NonFiniteGradientError as err:
        grads, failure = None, err
    _calibrate(tuner, name, grads[config.source] if grads else None, group, failure)
    if grads is None:
        partial = torch.full((config.latent_dim,), math.nan, device=tuner.gradiend_encoder_bias[name].device)
    else:
        partial = tuner.encoder_dots(grads[config.source], name)
    dots = all_reduce_sum(partial, group)
    _agree(dots.detach(), failure, "The encoder's dot product")
    latent = tuner.latent_from_dots(dots, name)
    return tuner.reconstruction_error(latent, grads[config.target], name), latent, adapter_entries(config)


def sharded_per_example_reconstruction_loss(
    tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], group: Any = None, adapter_name: Optional[str] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`gradiend_peft.objective.per_example_reconstruction_loss` for this process's share of the modules: the
    per-row encoder dot products ``(B, k)`` are summed over ``group`` (differentiably) and every other term of each
    row's loss is a sum over modules, so the processes' losses add up to the whole adapter's.

    Returns:
        `tuple`: ``(loss_p, latents, n)`` as for `sharded_reconstruction_loss`, with latents ``(B, k)``.
    """
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    try:
        (source_dots, target_dots), failure = per_example_probe_dots(tuner, batch, name, autocast_dtype), None
    except NonFiniteGradientError as err:
        failure = err
        rows = batch["input_ids"].shape[0]
        source_dots = torch.full((rows, config.latent_dim), math.nan,
                                 device=tuner.gradiend_encoder_bias[name].device)
        target_dots = None
    dots = all_reduce_sum(source_dots, group)
    _agree(dots.detach(), failure, "The encoder's per-row dot products")
    latents = tuner.latent_from_dots(dots, name)
    return per_example_losses(tuner, name, latents, target_dots).mean(), latents, adapter_entries(config)


@torch.no_grad()
def _sum_detached(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    out = tensor.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def sharded_encode_rows(tuner: "GradiendModel", batch: Mapping[str, torch.Tensor], group: Any = None,
                        adapter_name: Optional[str] = None, autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`gradiend_peft.objective.encode_rows` for this process's share of the modules: every row's encoder dot
    products over these modules, summed over ``group`` (one all-reduce of ``B x k`` numbers); shape ``(B, k)``, the
    same on every process of ``group``."""
    name = tuner.resolve_adapter(adapter_name)
    config = tuner.peft_config[name]
    try:
        partial, failure = per_example_encoder_dots(tuner, batch, config.source, name, autocast_dtype), None
    except NonFiniteGradientError as err:
        failure = err
        partial = torch.full((batch["input_ids"].shape[0], config.latent_dim), math.nan,
                             device=tuner.gradiend_encoder_bias[name].device)
    dots = _sum_detached(partial, group)
    _agree(dots, failure, "The encoder's per-row dot products")
    return tuner.latent_from_dots(dots, name).detach()


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
    total = _sum_detached(torch.cat(parts), group)
    summed = total[: bias.numel()].view_as(bias).to(grad.dtype)
    if bias.grad is None:
        bias.grad = summed.clone()
    else:
        bias.grad.copy_(summed)
    return total[bias.numel():] if extra is not None else None
