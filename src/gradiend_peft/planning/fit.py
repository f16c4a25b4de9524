"""What fits in a device's memory: the most blocks of a model one can target, and the largest model of the same shape.

Both searches plan training and row encoding (the larger peak, training in practice) for one process and for the
module-sharded mode, and bisect over a monotone size (the rewrite search's peak is reported by the plan; its batch
size sets it):

- **blocks**: the top-most ``L`` blocks of the model (the blocks closest to the output, as ``--layers 20-29`` of 30),
  with the same module kinds as the planned targets;
- **scaled model**: the model's config scaled by one factor in width and depth (attention heads, key-value heads in
  the same grouping, head size kept, hidden size = heads x head size, MLP size and block count in proportion;
  vocabulary kept), each candidate built on the meta device with the targets attached anew, targeting the same share
  of blocks at the same relative depth.

Targets outside the block list (an input embedding) take part in neither search: the block search runs only when
every target sits in a block, and scaled models get the block targets alone.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any, Callable, Optional, Sequence

from .memory import ModelShape, Settings, format_bytes, plan_phases
from .meta import TargetInfo

logger = logging.getLogger(__name__)

__all__ = ["fits", "scale_config"]


def _peak(shape: ModelShape, targets: Sequence[TargetInfo], settings: Settings, mode: str) -> int:
    """The larger of the training and encoding peaks in ``mode`` (the search's peak is set by its batch size, a free
    choice, and it does not grow with the targeted blocks: it is reported, not searched)."""
    _, phases = plan_phases(shape, targets, settings)
    return max(p.peak for p in phases if p.mode == mode and p.phase in ("training", "encoding"))


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> Optional[int]:
    """The largest ``x`` in ``[lo, hi]`` with ``ok(x)`` for a monotone ``ok`` (``None`` if even ``lo`` fails)."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _kinds(targets: Sequence[TargetInfo], prefix: Optional[str]) -> set[str]:
    """The module names of ``targets`` with the block index removed (``layers.{}.self_attn.q_proj``)."""
    return {re.sub(rf"^{re.escape(prefix)}\.\d+\.", "", t.name) if prefix else t.name for t in targets}


def _same_kinds(shape: ModelShape, kinds: set[str], blocks: set[int]) -> list[TargetInfo]:
    prefix = shape.block_prefix
    return [t for t in shape.targets if t.block in blocks
            and (re.sub(rf"^{re.escape(prefix)}\.\d+\.", "", t.name) if prefix else t.name) in kinds]


def scale_config(config: Any, heads: int) -> Any:
    """``config`` scaled to ``heads`` attention heads (width and depth by ``heads / config.num_attention_heads``).

    Raises:
        `ValueError`: for configs without ``num_attention_heads``, ``hidden_size`` and ``num_hidden_layers``.
    """
    try:
        old_heads, hidden, blocks = config.num_attention_heads, config.hidden_size, config.num_hidden_layers
    except AttributeError as err:
        raise ValueError(f"Cannot scale a {type(config).__name__}: it has no {err.name or 'head/width/depth'} field.") from err
    factor = heads / old_heads
    head_dim = getattr(config, "head_dim", None) or hidden // old_heads
    scaled = copy.deepcopy(config)
    kv = getattr(config, "num_key_value_heads", None)
    if kv:
        scaled.num_key_value_heads = max(1, heads // (old_heads // kv))
    scaled.num_attention_heads = heads
    scaled.hidden_size = heads * head_dim
    if getattr(config, "head_dim", None):
        scaled.head_dim = head_dim
    for name in ("intermediate_size", "n_inner"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            setattr(scaled, name, max(1, round(value * scaled.hidden_size / hidden)))
    scaled.num_hidden_layers = max(1, round(blocks * factor))
    return scaled


def fits(shape: ModelShape, targets: Sequence[TargetInfo], settings: Settings, budget: int) -> dict[str, Any]:
    """The most top-most blocks of ``shape`` and the largest model of its shape whose planned training and encoding
    peaks fit ``budget`` bytes, in one process and sharded over ``settings.processes``.

    Returns:
        `dict`: ``budget``, ``blocks`` (mode -> largest block count or ``None``), ``scaled`` (mode -> the largest
        model's parameters, blocks, hidden size, ``n`` and peak) and ``lines`` (the report as text).
    """
    modes = ["single"] + (["sharded"] if settings.processes > 1 else [])
    prefix = shape.block_prefix
    kinds = _kinds(targets, prefix)
    in_blocks = all(t.block is not None for t in targets)
    chosen = sorted({t.block for t in targets if t.block is not None})
    lines = [f"fits in {format_bytes(budget)} per process:"]
    result: dict[str, Any] = {"budget": budget, "blocks": {}, "scaled": {}}
    for mode in modes:
        label = "one process" if mode == "single" else f"{settings.processes} processes, sharded"
        if in_blocks and shape.num_blocks:
            def ok(count: int) -> bool:
                top = set(range(shape.num_blocks - count, shape.num_blocks))
                return _peak(shape, _same_kinds(shape, kinds, top), settings, mode) <= budget

            best = _largest(1, shape.num_blocks, ok)
            result["blocks"][mode] = best
            lines.append(f"  {label}: " + ("not even the top block" if best is None else
                                           f"the top {best} of {shape.num_blocks} blocks"))
        scaled = _largest_model(shape, kinds, chosen, settings, mode, budget)
        result["scaled"][mode] = scaled
        if scaled is None:
            lines.append(f"  {label}: no model of this shape fits (not even one head wide)")
        else:
            lines.append(f"  {label}: the largest model of this shape: {scaled['parameters'] / 1e9:,.2f}B parameters "
                         f"({scaled['blocks']} blocks, hidden {scaled['hidden']}), n = {scaled['entries']:,}, "
                         f"peak {format_bytes(scaled['peak'])}")
    result["lines"] = lines
    return result


def _largest_model(shape: ModelShape, kinds: set[str], chosen: Sequence[int], settings: Settings, mode: str,
                   budget: int) -> Optional[dict[str, Any]]:
    config = shape.config
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return None
    kv = getattr(config, "num_key_value_heads", None) or heads
    group = max(1, heads // kv)
    cache: dict[int, Optional[dict[str, Any]]] = {}

    def planned(units: int) -> Optional[dict[str, Any]]:
        if units not in cache:
            scaled_config = scale_config(config, units * group)
            scaled = ModelShape.build(scaled_config, _target_spec(shape, kinds), dtype=shape.dtype,
                                      latent_dim=settings.latent_dim, decoder_bias=settings.decoder_bias)
            blocks = scaled.num_blocks
            if chosen and shape.num_blocks:  # the same share of blocks, at the same relative depth
                keep = {j for j in range(blocks) if (j * shape.num_blocks) // blocks in set(chosen)}
                targets = _same_kinds(scaled, kinds, keep)
            else:
                targets = list(scaled.targets)
            peak = _peak(scaled, targets, settings, mode) if targets else None
            cache[units] = None if peak is None else {
                "parameters": scaled.base_parameters, "blocks": blocks, "hidden": scaled.hidden,
                "heads": units * group, "entries": sum(t.entries for t in targets), "peak": peak}
            logger.info("scaled to %d heads: %s", units * group, cache[units])
        return cache[units]

    def ok(units: int) -> bool:
        plan = planned(units)
        return plan is not None and plan["peak"] <= budget

    hi = max(1, heads // group)
    if ok(hi):  # grow until it no longer fits
        lo = hi
        while ok(hi * 2):
            lo, hi = hi * 2, hi * 2
        hi = hi * 2 - 1
    else:
        lo = 1
    best = _largest(lo, hi, ok)
    return None if best is None else planned(best)


def _target_spec(shape: ModelShape, kinds: set[str]) -> Any:
    """A ``target_modules`` regex selecting ``kinds`` in every block of a model like ``shape``'s."""
    prefix = shape.block_prefix
    if not prefix:
        return [sorted(kinds)[0]] if len(kinds) == 1 else sorted(kinds)
    alternatives = "|".join(re.escape(k) for k in sorted(kinds))
    return rf"{re.escape(prefix)}\.\d+\.({alternatives})"
