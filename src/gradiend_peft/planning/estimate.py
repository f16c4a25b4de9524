"""`estimate_memory`: the memory plan of a GRADIEND run from a model's config (the formulas are in
`gradiend_peft.planning.memory`) and, given a device's memory, what fits there (`gradiend_peft.planning.fit`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from .fit import fits
from .memory import MemoryPlan, ModelShape, Settings, parse_bytes, plan_phases

__all__ = ["estimate_memory", "settings_for"]


def estimate_memory(
    model: Any,
    target_modules: Any = None,
    *,
    layers: Optional[Sequence[int]] = None,
    include_embeddings: bool = False,
    latent_dim: int = 1,
    decoder_bias: bool = True,
    dtype: Union[str, torch.dtype] = "float32",
    autocast_adapter_dtype: bool = True,
    rows_per_gradient: int = 32,
    seq_len: int = 64,
    processes: int = 1,
    source: str = "alternative",
    target: str = "diff",
    search_rows: int = 600,
    search_batch_size: int = 32,
    search_seq_len: Optional[int] = None,
    device_memory: Union[None, str, int] = None,
    shape: Optional[ModelShape] = None,
) -> MemoryPlan:
    """Plans the peak memory per process of GRADIEND's training step, row encoding and rewrite search.

    The model is built from its config on the meta device (nothing is allocated), the adapter is attached with the
    tuner's own target resolution (``get_peft_model(model, GradiendConfig(target_modules=...))``), so ``n`` is exact,
    and the activations are traced on the meta device. The formulas are in `gradiend_peft.planning.memory`.

    Args:
        model: A transformers config or model, an embedded name (``"smollm2-135m"``: its cached config), a local
            folder, or a Hub id (needs network access or the Hub cache).
        target_modules: As `GradiendConfig`'s (``None``: the architecture's default; ``"all-linear"``; names; a regex).
        layers (`list[int]`, *optional*): Only the targets in these blocks (the CLI's ``--layers 20-29``).
        include_embeddings (`bool`): Also target the input embedding.
        latent_dim (`int`): ``k``. decoder_bias (`bool`): whether the decoder has a bias.
        dtype: The base model's dtype (``"float32"``, ``"bfloat16"``...).
        autocast_adapter_dtype (`bool`): ``True`` (default): a float32 adapter; ``False``: stored in the base dtype
            (trained through float32 masters either way).
        rows_per_gradient (`int`): Rows per GRADIEND sample (``B``); also the rows encoded in one pass.
        seq_len (`int`): Tokens per row after padding (``T``, the longest row of a group).
        processes (`int`): ``P`` for the module-sharded mode (also planned: one process).
        source, target (`str`): The adapter's gradient kinds (they decide ``G`` and the loss kinds).
        search_rows (`int`): Rows, neutral texts and control rows of the rewrite search, together.
        search_batch_size (`int`): Texts per forward pass of the search. search_seq_len: their tokens (default ``T``).
        device_memory (`str` or `int`, *optional*): e.g. ``"80GB"``: also find the most blocks of this model, and the
            largest model of its shape, whose training fits (see `gradiend_peft.planning.fit`).
        shape (`ModelShape`, *optional*): A model already built (`ModelShape.build`), to plan several settings.

    Returns:
        `MemoryPlan`: ``table()`` prints it, ``to_dict()`` serialises it.
    """
    if shape is None:
        shape = ModelShape.build(model, target_modules, include_embeddings=include_embeddings, latent_dim=latent_dim,
                                 decoder_bias=decoder_bias, dtype=dtype)
    settings = settings_for(latent_dim=latent_dim, decoder_bias=decoder_bias,
                            autocast_adapter_dtype=autocast_adapter_dtype, rows_per_gradient=rows_per_gradient,
                            seq_len=seq_len, processes=processes, source=source, target=target,
                            search_rows=search_rows, search_batch_size=search_batch_size, search_seq_len=search_seq_len)
    targets = shape.select(layers)
    counts, phases = plan_phases(shape, targets, settings)
    plan = MemoryPlan(
        model=shape.name, model_type=shape.model_type, dtype=str(shape.dtype).replace("torch.", ""),
        adapter_dtype=counts["adapter_dtype"], base_parameters=shape.base_parameters, base_bytes=shape.base_bytes,
        entries=counts["entries"], adapter_numbers=counts["adapter_numbers"], adapter_bytes=counts["adapter_bytes"],
        optimizer_bytes=counts["optimizer_bytes"], target_modules=len(targets),
        layers=None if layers is None else sorted(set(int(i) for i in layers)), num_blocks=shape.num_blocks,
        rows_per_gradient=rows_per_gradient, seq_len=seq_len, processes=processes, phases=phases)
    if device_memory is not None:
        plan.fits = fits(shape, targets, settings, parse_bytes(device_memory))
    return plan


def settings_for(*, source: str = "alternative", target: str = "diff", **kwargs: Any) -> Settings:
    """`Settings` from the public arguments: ``G`` and the loss kinds follow from ``source`` and ``target``."""
    kinds = {source, target}
    labels = set()
    for kind in kinds:
        labels.update(("factual", "alternative") if kind == "diff" else (kind,))
    for name in ("rows_per_gradient", "seq_len", "processes", "search_batch_size", "latent_dim"):
        if int(kwargs[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {kwargs[name]}.")
    return Settings(gradient_sets=len(kinds), loss_kinds=len(labels), **kwargs)

