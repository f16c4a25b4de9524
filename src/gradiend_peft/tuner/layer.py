"""GRADIEND tuner layers: each target module holds its slice of the encoder-decoder.

For a target weight ``W`` (any shape) and adapter ``a`` a layer stores

- ``gradiend_encoder[a]``: ``E``, shape ``(k, *W.shape)``: this module's part of the encoder weight;
- ``gradiend_decoder[a]``: ``D``, shape ``(k, *W.shape)``: this module's part of the decoder weight;
- ``gradiend_decoder_bias[a]``: ``c``, shape ``W.shape`` (absent without a decoder bias);
- ``gradiend_kept_indices[a]``: only for pruned adapters, the kept entries of ``W.flatten()``; then ``E`` and
  ``D`` are ``(k, m)`` and ``c`` is ``(m,)`` over those entries alone.

The encoding sums over layers, ``h = act(s * sum_m <E_m, g_m> + b_e)``, the decoding is local,
``d_m(h) = sum_j h_j D_m,j + c_m``, and the weight shift of a merge or of run-time steering is
``lr * d_m(feature_factor) / s`` (``s``: the adapter's gradient scale, so the shift is in gradient units).

Dtypes: ``E``, ``D`` and ``c`` are stored in float32 (float64 on a float64 base) unless the adapter was created or
loaded with ``autocast_adapter_dtype=False``, which stores them in the base weight's dtype (see `adapter_dtype`).
Every computation on them (encoding, decoding, the shift of a merge or of steering) runs in float32 at least
(`compute_dtype`), so a bfloat16 adapter differs from a float32 one by its storage rounding only.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .numerics import (
    FeatureFactor,
    adapter_dtype,
    as_factor,
    compute_dtype,
    dtype_name,
    embedding_per_example_dot,
    index_dtype,
    linear_per_example_dot,
)
from .layer_merging import LayerMerging


class GradiendLayer(LayerMerging, BaseTunerLayer):
    """Mixin holding one target module's share of every GRADIEND adapter (see the module docstring); merging and
    unmerging come from `LayerMerging`."""

    adapter_layer_names = ("gradiend_encoder", "gradiend_decoder", "gradiend_decoder_bias")
    other_param_names = ("gradiend_kept_indices",)
    weight_layout = "out_in"  # how the base weight is laid out: "out_in" (nn.Linear), "in_out" (Conv1D), "embedding"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.gradiend_encoder = nn.ParameterDict({})
        self.gradiend_decoder = nn.ParameterDict({})
        self.gradiend_decoder_bias = nn.ParameterDict({})
        self.gradiend_kept_indices = BufferDict({}, persistent=True)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        # adapter -> (feature_factor tensor, lr, gradient scale) of a merge, to undo it exactly as applied
        self._merge_record: dict[str, tuple[torch.Tensor, float, float]] = {}
        self._original_weights: dict[str, torch.Tensor] = {}
        # adapter -> the base weight's dtype at its merge and every dtype the weight was cast to since (see `_apply`)
        self._merge_dtypes: dict[str, list[torch.dtype]] = {}
        # adapter -> (feature_factor tensor, lr, gradient scale) of active run-time steering
        self._steering: dict[str, tuple[torch.Tensor, float, float]] = {}
        self._steering_cache: Optional[tuple[tuple, torch.Tensor]] = None  # (key, shifted weight), see `steer`
        self.cache_steering = False
        weight = self.get_base_layer().weight
        self.weight_shape = tuple(weight.shape)
        # as peft's layers expose them: Linear (out, in); transformers' Conv1D stores (in, out); Embedding
        # (num_embeddings, embedding_dim) reads as in = num_embeddings, out = embedding_dim
        if self.weight_layout == "out_in":
            self.out_features, self.in_features = self.weight_shape
        else:
            self.in_features, self.out_features = self.weight_shape
        self.kwargs = kwargs

    # ----------------------------------------------------------------------------------------------- set-up
    def update_layer(self, adapter_name: str, latent_dim: int, decoder_bias: bool, kept_entries: Optional[int]) -> None:
        """Creates this module's adapter tensors (zeros; the tuner initialises them once all layers exist), in
        `adapter_dtype` (float32; ``autocast_adapter_dtype=False`` casts them to the base weight's dtype later). Under
        peft's ``low_cpu_mem_usage=True`` they are created on the meta device and loading materialises them."""
        weight = self.get_base_layer().weight
        entry_shape = self.weight_shape if kept_entries is None else (int(kept_entries),)
        if kept_entries is not None:
            if not 0 <= kept_entries <= weight.numel():
                raise ValueError(f"kept_entries={kept_entries} is out of range for a weight of {weight.numel()} "
                                 "entries.")
            # placeholder indices; the real ones come from pruning or from the loaded state dict
            self.gradiend_kept_indices[adapter_name] = torch.arange(
                kept_entries, dtype=index_dtype(weight.numel()), device=weight.device
            )
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        like = {"device": device, "dtype": adapter_dtype(weight.dtype)}
        self.gradiend_encoder[adapter_name] = nn.Parameter(torch.zeros(latent_dim, *entry_shape, **like))
        self.gradiend_decoder[adapter_name] = nn.Parameter(torch.zeros(latent_dim, *entry_shape, **like))
        if decoder_bias:
            self.gradiend_decoder_bias[adapter_name] = nn.Parameter(torch.zeros(*entry_shape, **like))
        self.set_adapter(self.active_adapters)

    # ----------------------------------------------------------- the adapter's tensors: list, restrict, drop
    def named_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Container name -> this module's live tensor of the adapter: ``gradiend_encoder``, ``gradiend_decoder``,
        ``gradiend_decoder_bias`` (if any), ``gradiend_kept_indices`` (if pruned): the one listing of them."""
        containers = self.adapter_layer_names + self.other_param_names
        return {name: getattr(self, name)[adapter_name] for name in containers if adapter_name in getattr(self, name)}

    def adapter_tensors(self, adapter_name: str) -> list[nn.Parameter]:
        """The adapter's floating-point parameters in this layer: ``E``, ``D`` and (if present) ``c``."""
        return [t for name, t in self.named_adapter_tensors(adapter_name).items() if name in self.adapter_layer_names]

    @torch.no_grad()
    def restrict(self, adapter_name: str, local: torch.Tensor) -> None:
        """Keeps only the entries at ``local`` (positions among the current ones): ``E``, ``D``, ``c`` become new
        parameters over them (``requires_grad`` kept) and their indices into ``W.flatten()`` are recorded (pruning)."""
        local = local.to(self.gradiend_decoder[adapter_name].device)
        kept = self.gradiend_kept_indices[adapter_name][local] if self.is_pruned(adapter_name) else local
        for name, old in self.named_adapter_tensors(adapter_name).items():
            if name in self.adapter_layer_names:
                rows = old.detach().reshape(-1 if name == "gradiend_decoder_bias" else (old.shape[0], -1))[..., local]
                getattr(self, name)[adapter_name] = nn.Parameter(rows.clone(), requires_grad=old.requires_grad)
        self.gradiend_kept_indices[adapter_name] = kept.to(index_dtype(math.prod(self.weight_shape))).clone()

    def drop(self, adapter_name: str) -> int:
        """Frees this module's tensors of the adapter (another process holds it: module sharding); returns the bytes."""
        freed = 0
        for name, tensor in self.named_adapter_tensors(adapter_name).items():
            freed += tensor.numel() * tensor.element_size()
            del getattr(self, name)[adapter_name]
        return freed

    def cast_adapter(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> torch.dtype:
        """Stores the adapter's ``E``, ``D``, ``c`` in `adapter_dtype` of the base weight (keeping each parameter's
        ``requires_grad``); returns that dtype. Kept-entry indices stay integers."""
        dtype = adapter_dtype(self.get_base_layer().weight.dtype, autocast_adapter_dtype)
        for name, param in self.named_adapter_tensors(adapter_name).items():
            if name in self.adapter_layer_names and param.dtype != dtype:
                getattr(self, name)[adapter_name] = nn.Parameter(param.detach().to(dtype), param.requires_grad)
        return dtype

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """Moves the adapter to the base weight's device, keeping its dtype and ``requires_grad`` (peft's version also
        casts to the base weight's dtype, which would round a float32 adapter loaded with ``low_cpu_mem_usage=True``
        onto a bfloat16 base; GRADIEND's dtype is decided by `cast_adapter`)."""
        target = device if device is not None else self.get_base_layer().weight.device
        if target.type == "meta":
            return
        for name, tensor in self.named_adapter_tensors(adapter_name).items():
            if not tensor.is_meta and tensor.device != target:
                moved = tensor.detach().to(target)
                getattr(self, name)[adapter_name] = (nn.Parameter(moved, requires_grad=tensor.requires_grad)
                                                     if isinstance(tensor, nn.Parameter) else moved)

    def is_pruned(self, adapter_name: str) -> bool:
        return adapter_name in self.gradiend_kept_indices

    def num_entries(self, adapter_name: str) -> int:
        """Number of input entries this module contributes to the adapter (``n_m``)."""
        return self.gradiend_decoder[adapter_name][0].numel()

    def select(self, adapter_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Restricts a weight-shaped tensor to the adapter's input entries, flattened to ``(n_m,)``."""
        flat = tensor.reshape(-1)
        if self.is_pruned(adapter_name):
            return flat[self.gradiend_kept_indices[adapter_name]]
        return flat

    def scatter(self, adapter_name: str, flat: torch.Tensor) -> torch.Tensor:
        """Inverse of `select`: a weight-shaped tensor with ``flat`` at the adapter's entries, zeros elsewhere."""
        if not self.is_pruned(adapter_name):
            return flat.reshape(self.weight_shape)
        full = flat.new_zeros(math.prod(self.weight_shape))
        full[self.gradiend_kept_indices[adapter_name]] = flat
        return full.reshape(self.weight_shape)

    def full_encoder(self, adapter_name: str) -> torch.Tensor:
        """The encoder weight as ``(k, *W.shape)`` (pruned entries are zero)."""
        encoder = self.gradiend_encoder[adapter_name]
        if not self.is_pruned(adapter_name):
            return encoder
        return torch.stack([self.scatter(adapter_name, row) for row in encoder])

    # ------------------------------------------------------------------------------------------ the maths
    def encoder_dot(self, adapter_name: str, gradient: torch.Tensor) -> torch.Tensor:
        """``<E_j, g>`` for every latent dimension ``j``: shape ``(k,)``, in `compute_dtype` (float32 at least)."""
        encoder = self.gradiend_encoder[adapter_name]
        compute = compute_dtype(encoder.dtype)
        entries = self.select(adapter_name, gradient).to(compute)
        return encoder.reshape(encoder.shape[0], -1).to(compute) @ entries

    def decode(self, adapter_name: str, latent: torch.Tensor) -> torch.Tensor:
        """``d(h) = sum_j h_j D_j + c`` over the adapter's entries, flattened to ``(n_m,)``, in scaled units, in
        `compute_dtype` (float32 at least)."""
        decoder = self.gradiend_decoder[adapter_name]
        compute = compute_dtype(decoder.dtype)
        out = latent.to(compute) @ decoder.reshape(decoder.shape[0], -1).to(compute)
        if adapter_name in self.gradiend_decoder_bias:
            out = out + self.gradiend_decoder_bias[adapter_name].reshape(-1).to(compute)
        return out

    def reconstruction_error(self, adapter_name: str, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sum (d(h) - target)^2`` over this module's entries; ``target`` is weight-shaped, already scaled."""
        decoded = self.decode(adapter_name, latent)
        return (decoded - self.select(adapter_name, target).to(decoded.dtype)).pow(2).sum()

    def delta_weight(
        self, adapter_name: str, feature_factor: FeatureFactor, lr: float, gradient_scale: float = 1.0
    ) -> torch.Tensor:
        """The weight shift ``lr * d(feature_factor) / s``, shaped like the base weight, on its device, in
        `compute_dtype` (float32 also for a bfloat16/float16 adapter: a merge adds it to the base weight in float32
        and rounds once to the base dtype, see `shifted_weight`)."""
        decoder = self.gradiend_decoder[adapter_name]
        compute = compute_dtype(decoder.dtype)
        k = decoder.shape[0]
        factor = as_factor(feature_factor, k, decoder.device, dtype=compute)
        if not (math.isfinite(float(gradient_scale)) and float(gradient_scale) > 0):
            raise ValueError(f"The gradient scale of adapter {adapter_name!r} is {gradient_scale}; it must be a "
                             "positive finite number (a corrupt adapter file?).")
        bias = self.gradiend_decoder_bias[adapter_name].reshape(-1) if adapter_name in self.gradiend_decoder_bias else None
        rows = decoder.reshape(k, -1)
        if decoder.dtype == compute:
            # in place on the one fresh buffer of the matmul: the same values as ``(D h + c) * (lr / s)``, without a
            # second and third weight-sized temporary (a steered forward builds this for every layer and call)
            decoded = factor @ rows
            if bias is not None:
                decoded.add_(bias)
        else:
            # half-precision storage: accumulate ``c + sum_j h_j D_j`` in one float32 buffer (no float32 copy of D)
            decoded = bias.to(compute) if bias is not None else rows.new_zeros(rows.shape[1], dtype=compute)
            for j in range(k):
                decoded.add_(rows[j], alpha=float(factor[j]))
        decoded.mul_(float(lr) / float(gradient_scale))
        weight = self.get_base_layer().weight
        return self.scatter(adapter_name, decoded).to(device=weight.device)

    def shifted_weight(self, delta: torch.Tensor, what: str) -> torch.Tensor:
        """``W + delta`` computed in at least float32 and rounded once to ``W``'s dtype, in ``delta``'s buffer where
        the dtypes allow (merging and steering both use it, so a steered forward equals the merged one exactly).

        Raises:
            `ValueError`: if the rounded result, the value that would be stored, holds NaN or infinite values (a
                float32 sum beyond float16's range included; nothing is written then); ``what`` names the operation
                and the adapter in the message.
        """
        weight = self.get_base_layer().weight
        compute = torch.promote_types(torch.promote_types(weight.dtype, delta.dtype), torch.float32)
        shifted = delta.to(compute).add_(weight.detach().to(compute))  # in delta's own buffer where dtypes agree
        stored = shifted.to(weight.dtype)
        # checked after the rounding: a sum that float32 holds can still overflow float16 (65504) or bfloat16
        if not torch.isfinite(stored).all():
            raise ValueError(
                f"{what} would write NaN or infinite values into a {tuple(weight.shape)} {dtype_name(weight.dtype)} "
                "weight (the adapter holds non-finite values, or lr is too large for the weight's dtype). Nothing was "
                "written; use a smaller lr or check the adapter."
            )
        return stored

    def per_example_dot(self, probe: torch.Tensor, inputs: torch.Tensor, output_grad: torch.Tensor) -> torch.Tensor:
        """``<P_j, G_i>`` for a probe ``P`` of shape ``(k', *W.shape)`` (e.g. the encoder) and the per-example
        weight gradients ``G_i`` implied by one call of the module: shape ``(B, k')``.

        ``inputs`` is the call's input and ``output_grad`` the loss gradient w.r.t. its output (see
        `gradiend_peft.gradients`); the per-example gradients themselves are never formed.
        """
        return linear_per_example_dot(probe, inputs, output_grad, self.weight_layout)

    # ----------------------------------------------------------------------------------------- steering
    def set_steering(self, adapter_name: str, feature_factor: FeatureFactor, lr: float, gradient_scale: float) -> None:
        """Makes this layer's forward use ``W + lr * d(feature_factor) / gradient_scale`` for ``adapter_name``.

        The base weight is not changed; `clear_steering` ends it. The tuner's ``set_steering`` calls this on every
        layer with the adapter's gradient scale.
        """
        k = self.gradiend_decoder[adapter_name].shape[0]
        self._steering[adapter_name] = (as_factor(feature_factor, k, "cpu"), float(lr), float(gradient_scale))
        self._steering_cache = None

    def clear_steering(self) -> None:
        """Ends run-time steering of this layer for every adapter."""
        self._steering.clear()
        self._steering_cache = None
        self.cache_steering = False

    def steering_state(self) -> dict[str, tuple[torch.Tensor, float, float]]:
        """A copy of the active steering (adapter -> feature factor, lr, gradient scale), for `restore_steering`."""
        return dict(self._steering)

    def restore_steering(self, state: dict[str, tuple[torch.Tensor, float, float]]) -> None:
        """Puts back steering taken with `steering_state`."""
        self._steering.clear()
        self._steering.update(state)
        self._steering_cache = None

    def steering_delta(self) -> Optional[torch.Tensor]:
        """The summed weight shift of the steered, unmerged adapters (``None``: no steering acts here). An adapter
        named in ``set_steering`` acts whether or not it is active: the steering names what acts."""
        delta = None
        for name in sorted(self._steering):
            if name in self.gradiend_decoder and name not in self.merged_adapters:
                factor, lr, scale = self._steering[name]
                step = self.delta_weight(name, factor, lr, scale)
                delta = step if delta is None else delta + step
        return delta

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if self.disable_adapters or not self._steering:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        if base is self.base_layer and self.cache_steering:
            # the same shifted weight for every forward of this steering (the rewrite search runs many batches
            # per candidate); the key changes with the steering, the adapter's tensors and the base weight
            key = (tuple((n, self._fingerprint(n)) for n in sorted(self._steering)), id(base.weight),
                   base.weight._version, tuple(self.active_adapters))
            if self._steering_cache is None or self._steering_cache[0] != key:
                delta = self.steering_delta()
                shifted = None if delta is None else self.shifted_weight(delta, "Steering")
                self._steering_cache = (key, shifted)
            shifted = self._steering_cache[1]
            if shifted is None:
                return self.base_layer(x, *args, **kwargs)
            return torch.func.functional_call(base, {"weight": shifted}, (x, *args), kwargs)
        delta = self.steering_delta()
        if delta is None:
            return self.base_layer(x, *args, **kwargs)
        if base is self.base_layer:
            # One call with the shifted weight, as a merged model computes it: one matmul (not a second one for
            # the shift) and outputs equal to merging the same shift (`shifted_weight` is shared with `merge`).
            shifted = self.shifted_weight(delta, "Steering")
            return torch.func.functional_call(base, {"weight": shifted}, (x, *args), kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return result + self._apply_delta(x, delta).to(result.dtype)

    def _apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _GradiendModule(nn.Module, GradiendLayer):
    """An ``nn.Module`` GRADIEND layer (``nn.Module`` comes first in the MRO, so the forward is bound here)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, latent_dim: int, decoder_bias: bool,
                 kept_entries: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__()
        GradiendLayer.__init__(self, base_layer, **kwargs)
        self._check_base_layer()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, latent_dim, decoder_bias, kept_entries)

    def _check_base_layer(self) -> None:
        pass

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return GradiendLayer.forward(self, x, *args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        # a cast of merged weights (``model.half()``) rounds them: noted, so that `unmerge` refuses to subtract
        before = self.get_base_layer().weight.dtype
        result = super()._apply(fn, recurse)
        if self.merged_adapters:
            self.record_cast(before)
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # loading new weights into a merged adapter would leave the merge impossible to undo: refuse before any
        # tensor of this layer changes (peft's load_adapter and set_peft_model_state_dict end up here)
        for name in self.merged_adapters:
            keys = [f"{prefix}{container}.{name}" for container in self.adapter_layer_names + self.other_param_names]
            if any(key in state_dict for key in keys):
                raise RuntimeError(
                    f"Cannot load weights into adapter {name!r} while it is merged into {prefix.rstrip('.')!r}: the "
                    "merge could not be undone afterwards. Call unmerge_adapter() first."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __repr__(self) -> str:
        return "gradiend." + nn.Module.__repr__(self)


class Linear(_GradiendModule):
    """GRADIEND layer around an ``nn.Linear`` (``y = x W^T + b``)."""

    def _apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(delta.dtype), delta)


class Conv1DLayer(Linear):
    """GRADIEND layer around transformers' ``Conv1D`` (``y = x W + b``, weight stored ``(in, out)``)."""

    weight_layout = "in_out"

    def _apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return x.to(delta.dtype) @ delta


class Embedding(_GradiendModule):
    """GRADIEND layer around an ``nn.Embedding`` (also scaled embeddings such as Gemma's)."""

    weight_layout = "embedding"

    def _check_base_layer(self) -> None:
        base = self.get_base_layer()
        if getattr(base, "scale_grad_by_freq", False) or getattr(base, "sparse", False):
            raise ValueError("GRADIEND cannot target an nn.Embedding with scale_grad_by_freq or sparse gradients.")

    def _embed_scale_value(self) -> float:
        scale = self._get_embed_scale()
        return 1.0 if scale is None else float(scale)

    def _apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        return F.embedding(x, delta, base.padding_idx, base.max_norm, base.norm_type) * self._embed_scale_value()

    def per_example_dot(self, probe: torch.Tensor, inputs: torch.Tensor, output_grad: torch.Tensor) -> torch.Tensor:
        """``<P_j, G_i>`` for an embedding lookup: ``scale * sum_t P_j[token_it] . delta_it``."""
        padding = self.get_base_layer().padding_idx
        return embedding_per_example_dot(probe, inputs, output_grad, padding, self._embed_scale_value())


def layer_class_for(module: nn.Module) -> Optional[type[GradiendLayer]]:
    """The GRADIEND layer class that can wrap ``module``, or ``None``."""
    if isinstance(module, Conv1D):
        return Conv1DLayer
    if isinstance(module, nn.Linear):
        return Linear
    if isinstance(module, nn.Embedding):
        return Embedding
    return None
