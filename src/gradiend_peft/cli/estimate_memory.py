"""``gradiend-peft estimate-memory``: the peak memory per process of training, row encoding and the rewrite search,
planned from the model's config alone (`gradiend_peft.planning.estimate_memory`; the formulas are in
`gradiend_peft.planning.memory`).

    gradiend-peft estimate-memory --model smollm2-135m --layers 20-29 --rows_per_gradient 16 --seq_len 40 \\
        --processes 4 --device_memory 8GB

With ``--device_memory`` the command also reports the most blocks of the model (top-most first) and the largest model
of its shape whose plan fits, after taking ``--overhead`` off the device and dividing by ``1 + --headroom``.
"""

from __future__ import annotations

import json
import logging
import math
import re

logger = logging.getLogger(__name__)


def target_spec(targets):
    """``--targets`` as `GradiendConfig` takes it: ``None``, ``"all-linear"``, one regular expression (a single value
    with regex characters), or a list of module names (suffix match)."""
    if not targets:
        return None
    if len(targets) == 1 and (targets[0] == "all-linear" or re.search(r"[\\.*+?()\[\]|^$]", targets[0])):
        return targets[0]
    return list(targets)


def run(args):
    """Plans, prints the table and returns the `MemoryPlan` (written to ``--json`` when given)."""
    from ..planning import estimate_memory, format_bytes, parse_bytes
    from .steps import parse_layers

    if not math.isfinite(args.headroom) or args.headroom < 0:
        raise ValueError(f"--headroom {args.headroom}: it must be a finite number >= 0, the allocator's slack as a "
                         "fraction of the planned peak (e.g. 0.1: 10% more than the plan).")
    if args.adapter_dtype not in ("float32", "base", args.dtype):
        raise ValueError(f"--adapter_dtype {args.adapter_dtype!r}: use float32 (autocast_adapter_dtype=True) or base "
                         f"(the base model's dtype, {args.dtype}).")
    budget = None
    if args.device_memory:
        device, overhead = parse_bytes(args.device_memory), parse_bytes(args.overhead)
        budget = int((device - overhead) / (1.0 + args.headroom))
        if budget <= 0:
            raise ValueError(f"--overhead {args.overhead} leaves nothing of --device_memory {args.device_memory}.")
        logger.info("Budget per process: (%s - %s) / %.2f = %s", format_bytes(device), format_bytes(overhead),
                    1.0 + args.headroom, format_bytes(budget))
    plan = estimate_memory(
        args.model, target_spec(args.targets), layers=parse_layers(args.layers),
        include_embeddings=args.include_embeddings, latent_dim=args.latent_dim, dtype=args.dtype,
        autocast_adapter_dtype=args.adapter_dtype == "float32", rows_per_gradient=args.rows_per_gradient,
        seq_len=args.seq_len, processes=args.processes, search_rows=args.search_rows,
        search_batch_size=args.search_batch_size, search_seq_len=args.search_seq_len, device_memory=budget)
    if plan.fits:
        plan.fits["device_memory"] = args.device_memory
        plan.fits["lines"][0] = (f"fits ({args.device_memory} per device, less {args.overhead} overhead, / "
                                 f"{1.0 + args.headroom:.2f} headroom = {format_bytes(budget)} for the plan):")
    print(plan.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(plan.to_dict(), handle, indent=2)
            handle.write("\n")
    return plan
