"""Training an adapter stored in half precision through float32 master weights.

An adapter created or loaded with ``autocast_adapter_dtype=False`` on a bfloat16 (or float16) base is stored in that
dtype: half the memory and half the file of a float32 adapter. Its training should not run in that dtype: an update
below bfloat16's resolution (``2^-8`` of the value: weight decay's ``lr * wd * w`` always, small late steps) would
round away, and AdamW's moments would be kept in bfloat16 too. `float32_masters` trains it as mixed-precision training
does:

- at the start of ``train()``, every half-precision tensor of the adapter is upcast **in place** to float32
  (``param.data = param.data.float()``: the same `torch.nn.Parameter` objects, so an optimizer the user built
  beforehand, DDP's and the sharded trainer's references stay valid); the upcast is exact;
- training, evaluation, best-adapter snapshots and the optimizer state see float32 master weights: the run is the
  float32 run from the same (rounded) initial values, step for step;
- checkpoints save the adapter rounded to its storage dtype (`storage_state_dict`), as the adapter will be stored;
  resuming continues from those rounded values (the optimizer state is float32 in every case);
- at the end of ``train()`` (also when it fails), each tensor is rounded once, to nearest, back to its storage dtype.

So the trained adapter equals the float32 masters rounded once: each entry is within half a unit in the last place
(``2^-9`` relative for bfloat16, ``2^-12`` for float16) of the float32-trained value. A float16 master outside
float16's range (``|x| > 65504``) is not rounded to infinity: that tensor stays float32 and a warning names it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Mapping

import torch

logger = logging.getLogger(__name__)

__all__ = ["HALF_DTYPES", "float32_masters", "storable", "storage_state_dict"]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def storable(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``tensor`` rounds to ``dtype`` without overflowing to infinity."""
    if not tensor.numel():
        return True
    limit = torch.finfo(dtype).max
    return bool(tensor.detach().abs().max() <= limit)


def _adapter_named_parameters(model, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's floating-point parameters by their name in ``model`` (a PeftModel)."""
    suffix = f".{adapter}"
    return {name: param for name, param in model.named_parameters()
            if "gradiend_" in name and name.endswith(suffix) and param.is_floating_point()}


@contextlib.contextmanager
def float32_masters(model, adapter: str) -> Iterator[dict[str, torch.dtype]]:
    """Trains ``adapter``'s half-precision tensors as float32 masters for the duration (see the module docstring).

    Args:
        model (`peft.PeftModel`): The model holding the adapter.
        adapter (`str`): The adapter's name.

    Yields:
        `dict[str, torch.dtype]`: the upcast parameters' names and storage dtypes (empty for a float32 adapter).
    """
    params = _adapter_named_parameters(model, adapter)
    storage = {name: p.dtype for name, p in params.items() if p.dtype in HALF_DTYPES}
    if storage:
        logger.info("GRADIEND: the adapter is stored in %s; training %d tensors as float32 master weights, rounded "
                    "back once at the end.", sorted({str(d) for d in storage.values()}), len(storage))
    for name in storage:
        params[name].data = params[name].data.float()
    try:
        yield storage
    finally:
        kept = []
        for name, dtype in storage.items():
            param = params[name]
            if storable(param.data, dtype):
                param.data = param.data.to(dtype)
            else:
                kept.append(name)
        if kept:
            logger.warning(
                "GRADIEND: %d adapter tensors (e.g. %s) hold values beyond float16's range after training; they stay "
                "float32 instead of overflowing to infinity. Store the adapter in bfloat16 (a bfloat16 base with "
                "autocast_adapter_dtype=False) or float32.", len(kept), kept[0])


def storage_state_dict(model, storage: Mapping[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the master tensors named in ``storage`` rounded to their storage dtype (for
    checkpoints written while training float32 masters; tensors beyond float16's range stay float32)."""
    state = model.state_dict()
    for name, dtype in storage.items():
        if name in state and storable(state[name], dtype):
            state[name] = state[name].to(dtype)
    return state
