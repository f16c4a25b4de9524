"""Merging and run-time steering: applying a GRADIEND rewrite ``W_m += lr * d_m(feature_factor) / s``.

`MergingMixin` gives `GradiendModel` peft's merge verbs with GRADIEND's arguments (peft's own pass no keyword
arguments down to the layers) and run-time steering. The shift itself is computed in one place,
`GradiendLayer.delta_weight`, and added to the weight by `GradiendLayer.shifted_weight`, for merges and steering
alike.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator, Optional

import torch
from torch import nn

from .layer import Embedding, GradiendLayer
from .numerics import FeatureFactor, unmerge_cast_refusal, unmerge_refusal


class MergingMixin:
    """Merging (`merge_adapter`, `unmerge_adapter`, `merge_and_unload`) and steering (`set_steering`, `steer`) of
    `GradiendModel`; also what targeting a tied embedding means for them (`tied_heads`)."""

    def tied_heads(self) -> dict[str, nn.Linear]:
        """Target embeddings whose weight tensor another, untargeted module uses too (a tied LM head).

        Targeting a tied embedding means targeting the shared tensor: its gradient has both uses, a merge changes
        both, and steering shifts both.
        """
        tied: dict[str, nn.Linear] = {}
        layers = self.gradiend_layers()
        wrapped = {id(layer.get_base_layer()) for layer in layers.values()}
        for name, layer in layers.items():
            if not isinstance(layer, Embedding):
                continue
            weight = layer.get_base_layer().weight
            for module in self.model.modules():
                if id(module) in wrapped or isinstance(module, GradiendLayer):
                    continue
                if getattr(module, "weight", None) is weight:
                    if not isinstance(module, nn.Linear):
                        raise NotImplementedError(
                            f"The embedding {name!r} shares its weight with a {type(module).__name__}; GRADIEND "
                            "supports a tied nn.Linear LM head only. Untie the weights or leave the embedding out."
                        )
                    tied[name] = module
        return tied

    def _check_merge_allowed(self) -> None:
        # peft warns about tied targets; for GRADIEND a merge into the shared tensor is the intended edit
        # (see `tied_heads`), so there is nothing to warn about.
        return None

    def _merge_values(self, adapter_name: str, feature_factor: Optional[FeatureFactor], lr: Optional[float]):
        config = self.peft_config[adapter_name]
        feature_factor = config.feature_factor if feature_factor is None else feature_factor
        lr = config.lr if lr is None else lr
        if feature_factor is None or lr is None:
            raise ValueError(
                "Merging a GRADIEND adapter needs a feature_factor and an lr, e.g. "
                "merge_and_unload(feature_factor=1.0, lr=1e-3) (gradiend_peft.search_rewrite finds good values), or "
                "set GradiendConfig.feature_factor and GradiendConfig.lr."
            )
        if not math.isfinite(float(lr)):
            raise ValueError(f"lr must be finite, got {lr!r}.")
        return feature_factor, float(lr)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False,
                      feature_factor: Optional[FeatureFactor] = None, lr: Optional[float] = None,
                      keep_original: bool = False) -> None:
        """Writes ``W += lr * d(feature_factor) / s`` into every target weight (undo with `unmerge_adapter`).

        Merges are computed in float32, rounded to the weights' dtype, checked for NaN/infinities (the rounded
        values, so a float16 overflow counts) in every layer before anything is written, and refused for an
        adapter that is already merged with other values (unmerge first). On a bfloat16/float16 base the original
        weights are kept (so that unmerging restores them exactly) and a warning says how many entries the shift
        could not move because the dtype is too coarse.

        Args:
            adapter_names (`list[str]`, *optional*): Adapters to merge (default: the active ones).
            safe_merge (`bool`): Accepted for peft's signature; merges are always checked.
            feature_factor (`float`, *optional*): The latent value to decode; default ``config.feature_factor``.
            lr (`float`, *optional*): The step size; default ``config.lr``.
            keep_original (`bool`): Keep copies of the weights so that unmerging restores them exactly (always on
                for half-precision weights).

        Raises:
            `ValueError`: for an adapter already merged with another feature factor or lr, an unknown adapter name,
                or a merge that would write non-finite weights (nothing is written then).
        """
        self._check_merge_allowed()
        names = adapter_names or list(self.active_adapters)
        for name in names:
            self.resolve_adapter(name)
            self.check_complete(name, "Merging")
        todo = []
        for name in names:
            factor, step = self._merge_values(name, feature_factor, lr)
            scale = self.gradient_scale(name)
            layers = list(self.gradiend_layers(name).values())
            merged = [layer._merge_record[name] for layer in layers if name in layer.merged_adapters]
            if merged:
                old_factor, old_lr, old_scale, _ = merged[0]
                new_factor = torch.as_tensor(factor, dtype=torch.float32).reshape(-1).expand_as(old_factor)
                if old_lr != step or old_scale != scale or not torch.equal(old_factor, new_factor):
                    raise ValueError(
                        f"Adapter {name!r} is already merged with feature_factor={old_factor.tolist()}, lr={old_lr}; "
                        "call unmerge_adapter() before merging other values."
                    )
                continue
            todo.append((name, factor, step, scale, layers))
        if not todo:  # peft's words, as its tuners say them
            warnings.warn(f"All adapters are already merged, nothing to do: {names} are merged with these values.")
        for name, factor, step, scale, layers in todo:
            # every layer's shift is checked before any weight changes: a refused merge leaves no layer merged
            for layer in layers:
                layer.shifted_weight(layer.delta_weight(name, factor, step, scale), f"Merging adapter {name!r}")
            lost = moving = 0
            for layer in layers:
                lost += layer.merge(adapter_names=[name], feature_factor=factor, lr=step,
                                    gradient_scales={name: scale}, keep_original=keep_original)
                moving += layer.num_entries(name)
            if lost:
                warnings.warn(
                    f"Merging adapter {name!r}: {lost} of {moving} adapter entries did not change, because the base "
                    "weights' dtype cannot represent so small a step. Load the base model in float32 to apply the edit "
                    "fully (unmerging still restores the original weights exactly).",
                    stacklevel=2,
                )

    def unmerge_adapter(self) -> None:
        """Undoes all merges (exactly where the original was kept, cast to the weights' present dtype, else by
        subtracting the same shift).

        Raises:
            `RuntimeError`: if a merged adapter changed after its merge (pruned, reset, trained, loaded anew), or the
                merged weights were cast to another dtype since (``model.half()``, also cast back), and no original
                was kept: subtracting would not restore the base weights. Nothing is changed then.
        """
        layers = self.gradiend_layers().values()
        changed = {name for layer in layers for name in layer.merged_adapters
                   if name not in layer._original_weights and layer.changed_since_merge(name)}
        if changed:
            raise RuntimeError(unmerge_refusal(sorted(changed)))
        casts = {name: path for layer in layers for name in layer.merged_adapters
                 for path in [layer.casts_since_merge(name)] if path}
        if casts:
            raise RuntimeError(unmerge_cast_refusal(casts))
        for layer in layers:
            layer.unmerge()

    def merged_adapter_names(self) -> list[str]:
        """The adapters merged into the base weights now (in any target module)."""
        return sorted({name for layer in self.gradiend_layers().values() for name in layer.merged_adapters})

    def check_unmerged(self, what: str) -> None:
        """Raises a `RuntimeError` naming ``what`` and the fix when an adapter is merged into the base weights."""
        merged = self.merged_adapter_names()
        if merged:
            raise RuntimeError(
                f"{what} needs the base weights as they are, but adapter(s) {merged} are merged into them. Call "
                "unmerge_adapter() first."
            )

    @property
    def steering_active(self) -> bool:
        """Whether run-time steering is set on any layer (see `set_steering`)."""
        return any(layer.steering_state() for layer in self.gradiend_layers().values())

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None, feature_factor: Optional[FeatureFactor] = None,
                         lr: Optional[float] = None) -> nn.Module:
        """Merges ``lr * d(feature_factor)`` into the base weights and returns the plain transformers model.

        Args:
            progressbar (`bool`): Unused (merging is one pass over the target modules); kept for peft's signature.
            safe_merge (`bool`): Refuse to write weights containing NaN or infinities.
            adapter_names (`list[str]`, *optional*): Adapters to merge (default: the active ones).
            feature_factor (`float`, *optional*): The latent value to decode; default ``config.feature_factor``.
            lr (`float`, *optional*): The step size; default ``config.lr``.
        """
        self.merge_adapter(adapter_names, safe_merge=safe_merge, feature_factor=feature_factor, lr=lr)
        for layer in self.gradiend_layers().values():
            layer.clear_merges()
        return self._unload_and_optionally_merge(merge=False)

    def set_steering(self, feature_factor: FeatureFactor, lr: float, adapter_names: Optional[list[str]] = None,
                     cache: bool = False) -> None:
        """Steers at run time: forward passes use ``W + lr * d(feature_factor) / s`` without changing ``W``.

        The adapters named (default: the active ones) act whether or not they are active, and only those.

        With ``cache=True`` each layer computes its shifted weight once and reuses it for every forward pass until
        the steering, the adapter or the base weight changes: faster for many batches, at the memory of one copy of
        the targeted weights.

        Raises:
            `RuntimeError`: while an adapter is merged (steering would act on merged weights; unmerge first).
        """
        self.check_unmerged("Steering")
        for name in adapter_names or list(self.active_adapters):
            self.check_complete(name, "Steering")
            factor, step = self._merge_values(name, feature_factor, lr)
            scale = self.gradient_scale(name)
            for layer in self.gradiend_layers(name).values():
                layer.set_steering(name, factor, step, scale)
                layer.cache_steering = cache
        if not self.__dict__.get("_tied_steering_hooks"):
            layers = self.gradiend_layers()
            self.__dict__["_tied_steering_hooks"] = [
                head.register_forward_hook(_tied_head_steering_hook(layers[name]))
                for name, head in self.tied_heads().items()
            ]

    def clear_steering(self) -> None:
        """Stops run-time steering."""
        for layer in self.gradiend_layers().values():
            layer.clear_steering()
        for handle in self.__dict__.pop("_tied_steering_hooks", []):
            handle.remove()

    @contextlib.contextmanager
    def steer(self, feature_factor: FeatureFactor, lr: float, adapter_names: Optional[list[str]] = None,
              cache: bool = False) -> Iterator[None]:
        """Context manager form of `set_steering`; steering stops on exit."""
        self.set_steering(feature_factor, lr, adapter_names, cache=cache)
        try:
            yield
        finally:
            self.clear_steering()


def _tied_head_steering_hook(layer: GradiendLayer):
    """A forward hook that shifts a tied LM head by its embedding's steering delta."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> Optional[torch.Tensor]:
        if layer.disable_adapters or not layer.steering_state():
            return None
        delta = layer.steering_delta()
        if delta is None:
            return None
        return output + nn.functional.linear(args[0].to(delta.dtype), delta).to(output.dtype)

    return hook
