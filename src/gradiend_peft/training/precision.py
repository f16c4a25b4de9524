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
- checkpoints save the adapter rounded to its storage dtype (`stored_precision`), as the adapter will be stored, and
  the float32 masters in a file of the trainer's own, ``gradiend_float32_masters.safetensors`` (`save_masters`);
  resuming puts the masters back (`load_masters`), so an interrupted and resumed run ends bit for bit as an
  uninterrupted one (the optimizer state is float32 in every case);
- at the end of ``train()`` (also when it fails), each tensor is rounded once back to its storage dtype
  (`round_to_storage`): the decoder, its bias and the encoder bias to nearest, the encoder weights ``E``
  **stochastically** (up or down with the probabilities that make the rounding unbiased, from a generator seeded from
  the training seed: reproducible; see `rounding_generator`).

Why the encoder is rounded stochastically: ``E`` learns at ``learning_rate * encoder_lr_fan_in / n`` (see
`GradiendTrainingArguments`), so on a large model its whole training moves each entry by less than half a bfloat16
unit (SmolLM2 blocks 20-29, 40 steps at 1e-5: at most 2e-7, where most entries' units are 2e-7 to 1e-6). Rounding to
nearest puts most entries back on their initial values: the learned direction is erased, coherently over millions of
entries, and the encodings move by up to 0.8 (held-out correlation 0.745 -> 0.595, ``docs/guides/memory.md``).
Unbiased rounding keeps the direction in expectation and its errors add up like a random walk: encodings within 0.005,
r 0.745 kept.

Each stored entry is within one unit in the last place of its float32 master (half a unit for nearest rounding):
``2^-7`` relative for bfloat16, ``2^-10`` for float16. A float16 master outside float16's range (``|x| > 65504``) is
not rounded to infinity: that tensor stays float32 and a warning names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Iterator, Mapping, Union

import torch

from ..atomic import atomic_write_bytes
from ..tuner.model import tuner_of

logger = logging.getLogger(__name__)

__all__ = ["HALF_DTYPES", "MASTERS_FILE", "float32_masters", "load_masters", "round_to_storage", "rounding_generator",
           "save_masters", "stochastic_round", "storable", "stored_precision"]

HALF_DTYPES = (torch.float16, torch.bfloat16)
MASTERS_FILE = "gradiend_float32_masters.safetensors"
"""A checkpoint's float32 masters of a half-precision adapter (the adapter file there holds the rounded values)."""


def storable(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``tensor`` rounds to ``dtype`` without overflowing to infinity."""
    if not tensor.numel():
        return True
    limit = torch.finfo(dtype).max
    return bool(tensor.detach().abs().max() <= limit)


def stochastic_round(tensor: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``tensor`` rounded to ``dtype`` up or down, to the next value ``a`` with probability ``1 - |x - a| / ulp``:
    unbiased (``E[result] = x``), never more than one unit in the last place from ``x``."""
    wide = tensor.detach().float()
    nearest = wide.to(dtype)
    toward = torch.where(nearest.float() < wide, torch.inf, -torch.inf).to(dtype)
    other = torch.nextafter(nearest, toward)
    gap = (other.float() - nearest.float()).abs()
    chance = torch.where(gap > 0, (wide - nearest.float()).abs() / gap, torch.zeros_like(gap))
    draw = torch.rand(wide.shape, generator=generator, device=generator.device).to(wide.device)
    return torch.where(draw < chance, other, nearest)


def rounding_generator(seed: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """The generator of the stochastic rounding, seeded with a hash of ``seed``: its draws must not be the stream that
    drew the adapter's initial values (`GradiendModel` draws them with ``torch.rand`` from ``init_seed``, which the
    command line sets to the training seed). Measured on SmolLM2: with the same seed the rounding errors line up with
    ``E`` and moved encodings by up to 1, as much as rounding to nearest; with a hashed seed by at most 0.005."""
    mixed = int.from_bytes(hashlib.sha256(f"gradiend_peft stochastic rounding {int(seed)}".encode()).digest()[:7], "big")
    return torch.Generator(device=device).manual_seed(mixed)


def _is_encoder_weight(name: str) -> bool:
    """``...gradiend_encoder`` (`GradiendModel.adapter_state_dict`'s name) or ``...gradiend_encoder.<adapter>``."""
    return ".gradiend_encoder." in f"{name}."


def round_to_storage(tensors: Mapping[str, torch.Tensor], storage: Mapping[str, torch.dtype],
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """The master ``tensors`` named in ``storage`` rounded to their storage dtype: encoder weights stochastically
    (`stochastic_round`, one `rounding_generator` from ``seed``, tensors in name order), the others to nearest; a tensor
    beyond its dtype's range is left out (it stays float32)."""
    rounded = {}
    generators: dict[str, torch.Generator] = {}
    for name in sorted(storage):
        tensor, dtype = tensors[name], storage[name]
        if not storable(tensor, dtype):
            continue
        if _is_encoder_weight(name):
            device = tensor.device.type
            if device not in generators:
                generators[device] = rounding_generator(seed, device)
            rounded[name] = stochastic_round(tensor, dtype, generators[device])
        else:
            rounded[name] = tensor.detach().to(dtype)
    return rounded


def _adapter_parameters(model, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters by their `GradiendModel.adapter_state_dict` names."""
    state = tuner_of(model).adapter_state_dict(adapter)
    return {name: tensor for name, tensor in state.items() if isinstance(tensor, torch.nn.Parameter)}


@contextlib.contextmanager
def float32_masters(model, adapter: str, seed: int = 0) -> Iterator[dict[str, torch.dtype]]:
    """Trains ``adapter``'s half-precision tensors as float32 masters for the duration (see the module docstring).

    Args:
        model (`peft.PeftModel`): The model holding the adapter.
        adapter (`str`): The adapter's name.
        seed (`int`): Seeds the stochastic rounding of the encoder weights at the end.

    Yields:
        `dict[str, torch.dtype]`: the upcast parameters' names (as in `GradiendModel.adapter_state_dict`) and storage
        dtypes (empty for a float32 adapter).
    """
    params = _adapter_parameters(model, adapter)
    storage = {name: p.dtype for name, p in params.items() if p.dtype in HALF_DTYPES}
    if storage:
        logger.info("GRADIEND: the adapter is stored in %s; training %d tensors as float32 master weights, rounded "
                    "back once at the end.", sorted({str(d) for d in storage.values()}), len(storage))
    for name in storage:
        params[name].data = params[name].data.float()
    try:
        yield storage
    finally:
        rounded = round_to_storage({name: params[name].data for name in storage}, storage, seed)
        for name, tensor in rounded.items():
            params[name].data = tensor
        kept = sorted(set(storage) - set(rounded))
        if kept:
            logger.warning(
                "GRADIEND: %d adapter tensors (e.g. %s) hold values beyond float16's range after training; they stay "
                "float32 instead of overflowing to infinity. Store the adapter in bfloat16 (a bfloat16 base with "
                "autocast_adapter_dtype=False) or float32.", len(kept), kept[0])


@contextlib.contextmanager
def stored_precision(model, adapter: str, storage: Mapping[str, torch.dtype], seed: int = 0) -> Iterator[None]:
    """For the duration (a checkpoint's save), the master tensors named in ``storage`` hold the values they will be
    stored with, rounded as `round_to_storage` rounds them; the masters are put back afterwards."""
    params = _adapter_parameters(model, adapter)
    masters = {name: params[name].data for name in storage}
    for name, tensor in round_to_storage(masters, storage, seed).items():
        params[name].data = tensor
    try:
        yield
    finally:
        for name, tensor in masters.items():
            params[name].data = tensor


def save_masters(model, adapter: str, storage: Mapping[str, torch.dtype], folder: str) -> None:
    """Writes the float32 masters named in ``storage`` into ``folder``/`MASTERS_FILE` (safetensors, atomically)."""
    from safetensors.torch import save

    params = _adapter_parameters(model, adapter)
    masters = {name: params[name].detach().to("cpu").contiguous() for name in sorted(storage)}
    atomic_write_bytes(os.path.join(folder, MASTERS_FILE), save(masters, metadata={"format": "pt"}))


@torch.no_grad()
def load_masters(model, adapter: str, storage: Mapping[str, torch.dtype], folder: str) -> bool:
    """Copies the float32 masters that `save_masters` wrote into ``folder`` back into the adapter (in place: the
    optimizer keeps its references); ``False`` when ``folder`` holds none.

    Raises:
        `ValueError`: when the file's tensors are not this adapter's masters (other names or shapes, non-finite or
            not float32 values).
    """
    from safetensors.torch import load_file

    path = os.path.join(folder, MASTERS_FILE)
    if not os.path.isfile(path):
        return False
    tensors = load_file(path)
    params = _adapter_parameters(model, adapter)
    wrong = sorted(set(tensors) ^ set(storage))
    wrong += sorted(name for name, tensor in tensors.items() if name in storage and (
        tensor.shape != params[name].shape or tensor.dtype != torch.float32 or not bool(torch.isfinite(tensor).all())))
    if wrong:
        raise ValueError(f"{path} does not hold this adapter's float32 masters (e.g. {wrong[:3]}): the checkpoint is "
                         "not this run's. Resume from a checkpoint of this training.")
    for name, tensor in tensors.items():
        params[name].copy_(tensor)
    return True
