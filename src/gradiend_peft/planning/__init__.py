"""Planning GRADIEND runs before they start: `estimate_memory` gives the peak memory per process of training,
row encoding and the rewrite search, for one process and for the module-sharded mode, from a model's config alone
(built on the meta device; nothing is allocated). The formulas are in `gradiend_peft.planning.memory`.

    from gradiend_peft.planning import estimate_memory

    plan = estimate_memory("smollm2-135m", layers=range(20, 30), rows_per_gradient=16, seq_len=40, processes=4,
                           device_memory="8GB")
    print(plan.table())

The command line: ``gradiend-peft estimate-memory --model smollm2-135m --layers 20-29 --processes 4``.
"""

from .estimate import estimate_memory
from .memory import MemoryPlan, ModelShape, PhasePlan, format_bytes, parse_bytes

__all__ = ["MemoryPlan", "ModelShape", "PhasePlan", "estimate_memory", "format_bytes", "parse_bytes"]
