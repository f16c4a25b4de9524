"""Numbers shared by GRADIEND's layers and tuner: the dtypes adapters are stored and computed in, feature factors,
kept-entry index dtypes, the message refusing an unmerge that could not be undone, and the per-example dot product
of a linear layer."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

FeatureFactor = Union[float, Sequence[float], torch.Tensor]


def index_dtype(numel: int) -> torch.dtype:
    """The dtype of kept-entry indices into a weight of ``numel`` entries: int32 where it fits (4 bytes per kept entry
    on disk instead of 8), else int64."""
    return torch.int32 if numel < 2**31 else torch.int64


_STORABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adapter_dtype(weight_dtype: torch.dtype, autocast_adapter_dtype: bool = True) -> torch.dtype:
    """The dtype GRADIEND stores an adapter's tensors in, for a base weight of ``weight_dtype``.

    ``autocast_adapter_dtype=True`` (peft's default): float32 master weights whatever the base (float64 on a float64
    base: autocasting only ever widens, as in peft). ``False``: the base weight's own dtype (e.g. bfloat16 storage, half
    the memory of float32; the adapter is 2-3x the size of the weights it targets), float32 for a weight dtype torch
    cannot compute in (quantised or float8 weights).
    """
    if autocast_adapter_dtype:
        return torch.float64 if weight_dtype == torch.float64 else torch.float32
    return weight_dtype if weight_dtype in _STORABLE else torch.float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype adapter maths runs in for tensors stored in ``dtype``: float32, or float64 for float64 tensors."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_factor(feature_factor: FeatureFactor, k: int, device, dtype=torch.float32) -> torch.Tensor:
    """``feature_factor`` as a ``(k,)`` tensor (one number is used for every latent dimension), checked finite."""
    factor = torch.as_tensor(feature_factor, dtype=dtype, device=device).reshape(-1)
    if factor.numel() == 1:
        factor = factor.expand(k)
    if factor.numel() != k:
        raise ValueError(f"feature_factor has {factor.numel()} values but the adapter's latent_dim is {k}.")
    if not torch.isfinite(factor).all():
        raise ValueError(f"feature_factor must be finite, got {factor.tolist()}.")
    return factor


def unmerge_refusal(adapters: Sequence[str]) -> str:
    """The message refusing to unmerge adapters that changed after their merge."""
    return (
        f"Adapter(s) {sorted(set(adapters))} changed after they were merged (pruned, reset, trained or loaded anew), "
        "so their current decoder would not undo the merge and the base weights cannot be restored. Nothing was "
        "changed. Reload the base model, or next time unmerge before changing the adapter (or merge with "
        "keep_original=True)."
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``, for messages."""
    return str(dtype).removeprefix("torch.")


def unmerge_cast_refusal(casts: dict[str, Sequence[torch.dtype]]) -> str:
    """The message refusing to unmerge adapters whose merged base weights changed dtype after the merge (``casts``:
    adapter -> the dtypes the weights had, from the merge's on)."""
    paths = "; ".join(f"{name!r}: {' -> '.join(dtype_name(d) for d in path)} since its merge"
                      for name, path in sorted(casts.items()))
    return (
        f"Cannot unmerge: the base weights changed dtype after the merge ({paths}; model.half(), .to(dtype) or "
        "similar). Each cast rounded the merged weights, so subtracting the shift would not restore the original "
        "weights, and no copy of them was kept. Nothing was changed. Reload the base model; next time unmerge before "
        "casting, or merge with keep_original=True (the kept original is then restored, cast to the new dtype)."
    )


def linear_per_example_dot(
    encoder: torch.Tensor, inputs: torch.Tensor, output_grad: torch.Tensor, layout: str
) -> torch.Tensor:
    """``<E_j, sum_t delta_it x_it^T>`` per example ``i`` for ``y = x W^T`` (``layout="out_in"``) or
    ``y = x W`` (``layout="in_out"``, transformers' Conv1D), without forming the per-example gradients."""
    k = encoder.shape[0]
    batch = inputs.shape[0]
    compute = compute_dtype(encoder.dtype)
    encoder = encoder.to(compute)
    x = inputs.reshape(batch, -1, inputs.shape[-1]).to(compute)
    delta = output_grad.reshape(batch, -1, output_grad.shape[-1]).to(compute)
    if layout == "out_in":  # encoder (k, out, in)
        out_features = encoder.shape[1]
        projected = x @ encoder.reshape(k * out_features, -1).T
    else:  # encoder (k, in, out)
        out_features = encoder.shape[2]
        projected = x @ encoder.permute(1, 0, 2).reshape(encoder.shape[1], k * out_features)
    projected = projected.reshape(batch, x.shape[1], k, out_features)
    return torch.einsum("btko,bto->bk", projected, delta)


def embedding_per_example_dot(encoder: torch.Tensor, ids: torch.Tensor, output_grad: torch.Tensor,
                              padding_idx: Optional[int], scale: float) -> torch.Tensor:
    """``<E_j, G_i>`` per example ``i`` for an embedding lookup ``y = scale * W[ids]``:
    ``scale * sum_t E_j[id_it] . delta_it`` (the padding row gets no gradient, as in autograd)."""
    compute = compute_dtype(encoder.dtype)
    ids = ids.reshape(ids.shape[0], -1)
    delta = output_grad.reshape(ids.shape[0], ids.shape[1], -1).to(compute)
    if padding_idx is not None:
        delta = delta * (ids != padding_idx).unsqueeze(-1).to(delta.dtype)
    gathered = encoder[:, ids].to(compute)  # (k, B, T, d)
    return torch.einsum("kbtd,btd->bk", gathered, delta) * scale
