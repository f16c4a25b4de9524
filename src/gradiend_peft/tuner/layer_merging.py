"""The merge bookkeeping of a GRADIEND layer: writing an adapter's shift into the base weight and undoing it.

`LayerMerging` is a mixin of `gradiend_peft.tuner.layer.GradiendLayer`; the shift itself comes from the layer's
``delta_weight`` and ``shifted_weight``. A merge records what it applied (feature factor, lr, gradient scale), a
fingerprint of the adapter's tensors and the base weight's dtype, so that an unmerge refuses what it could not undo:
an adapter changed after its merge, or merged weights cast to another dtype since (each cast rounds them), unless
the original weight was kept.
"""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge

from .numerics import FeatureFactor, as_factor, unmerge_cast_refusal, unmerge_refusal


class LayerMerging:
    """Merging into and unmerging from one layer's base weight (see the module docstring). The host class provides
    ``merged_adapters``, ``_merge_record``, ``_original_weights``, ``_merge_dtypes``, ``gradiend_decoder``,
    ``gradiend_decoder_bias``, ``gradiend_kept_indices``, ``get_base_layer``, ``delta_weight``, ``shifted_weight`` and
    ``num_entries``."""

    def _fingerprint(self, adapter_name: str) -> tuple:
        """Identity and in-place version of every tensor a merge's delta depends on: a change (pruning, a reset,
        a training step, loading weights) makes the fingerprint differ."""
        tensors = [container[adapter_name] if adapter_name in container else None
                   for container in (self.gradiend_decoder, self.gradiend_decoder_bias, self.gradiend_kept_indices)]
        return tuple((id(t), t._version) if t is not None else None for t in tensors)

    def changed_since_merge(self, adapter_name: str) -> bool:
        """Whether ``adapter_name`` is merged into this layer and its tensors changed after the merge."""
        record = self._merge_record.get(adapter_name)
        return record is not None and record[3] != self._fingerprint(adapter_name)

    def casts_since_merge(self, adapter_name: str) -> list[torch.dtype]:
        """The dtypes the base weight had from ``adapter_name``'s merge on, when it changed dtype since (a cast of
        the merged weights, e.g. ``model.half()``) and no original was kept; else ``[]`` (the merge can be undone)."""
        if adapter_name not in self.merged_adapters or adapter_name in self._original_weights:
            return []
        path = list(self._merge_dtypes.get(adapter_name, []))
        current = self.get_base_layer().weight.dtype
        if path and path[-1] != current:
            path.append(current)
        return path if len(path) > 1 else []

    def record_cast(self, before: torch.dtype) -> None:
        """Notes that the base weight was cast from ``before`` to its present dtype while adapters are merged (called
        by `_apply`, so that casting back, e.g. ``.half()`` then ``.float()``, is still seen by `unmerge`)."""
        current = self.get_base_layer().weight.dtype
        if current != before:
            for name in self.merged_adapters:
                self._merge_dtypes.setdefault(name, [before]).append(current)

    def clear_merges(self) -> None:
        """Forgets every merge without undoing it (the merged weights become the base weights)."""
        self.merged_adapters.clear()
        self._merge_record.clear()
        self._original_weights.clear()
        self._merge_dtypes.clear()

    def merge(
        self,
        safe_merge: bool = False,
        adapter_names: Optional[list[str]] = None,
        feature_factor: FeatureFactor = 0.0,
        lr: float = 0.0,
        gradient_scales: Optional[dict[str, float]] = None,
        keep_original: bool = False,
    ) -> int:
        """Adds ``lr * d(feature_factor) / s`` of each adapter to the base weight.

        The sum is formed in float32 (at least) and rounded once to the weight's dtype, and that rounded value is
        checked for NaN and infinities before anything is written, whatever ``safe_merge`` says (peft's flag, kept for its
        signature). A base weight in bfloat16/float16 keeps a copy of its original, so that `unmerge` restores it
        exactly.

        Args:
            safe_merge (`bool`): Accepted for peft's signature; merges are always checked.
            adapter_names (`list[str]`, *optional*): Adapters to merge (default: the active ones).
            feature_factor (`float` or sequence): The latent value to decode (length ``latent_dim``).
            lr (`float`): The step size of the rewrite.
            gradient_scales (`dict[str, float]`, *optional*): Each adapter's gradient scale (default 1).
            keep_original (`bool`): Keep a copy of the weight so that `unmerge` restores it exactly (always on
                for half-precision weights).

        Returns:
            `int`: how many entries the shift should have changed (non-zero shift) but did not, because the
            weight's dtype cannot represent so small a step (0 for float32 weights in practice).
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        lost = 0
        for name in adapter_names:
            if name not in self.gradiend_decoder:
                continue
            scale = (gradient_scales or {}).get(name, 1.0)
            factor = as_factor(feature_factor, self.gradiend_decoder[name].shape[0], "cpu")
            delta = self.delta_weight(name, factor, lr, scale)
            moving = delta != 0
            shifted = self.shifted_weight(delta, f"Merging adapter {name!r}")
            if base.weight.dtype in (torch.float16, torch.bfloat16):
                lost = int((moving & (shifted == base.weight.data)).sum())
                keep_original = True
            if keep_original:
                self._original_weights[name] = base.weight.data.detach().clone()
            base.weight.data.copy_(shifted)
            self._merge_record[name] = (factor, float(lr), float(scale), self._fingerprint(name))
            self._merge_dtypes[name] = [base.weight.dtype]
            self.merged_adapters.append(name)
        return lost

    def unmerge(self) -> None:
        """Undoes every merge, newest first: exactly where the merge kept the original weight (cast to the weight's
        present dtype), else by subtracting the same shift.

        Raises:
            `RuntimeError`: if an adapter changed after it was merged, or the base weight changed dtype after the
                merge (see `casts_since_merge`), and no original was kept: subtracting would not restore the weight.
                Nothing is changed then.
        """
        changed = [name for name in self.merged_adapters
                   if name not in self._original_weights and self.changed_since_merge(name)]
        if changed:
            raise RuntimeError(unmerge_refusal(changed))
        casts = {name: self.casts_since_merge(name) for name in self.merged_adapters}
        casts = {name: path for name, path in casts.items() if path}
        if casts:
            raise RuntimeError(unmerge_cast_refusal(casts))
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            factor, lr, scale, _ = self._merge_record.pop(name)
            self._merge_dtypes.pop(name, None)
            original = self._original_weights.pop(name, None)
            if original is not None:
                base.weight.data.copy_(original)
            else:
                base.weight.data.sub_(self.delta_weight(name, factor, lr, scale).to(base.weight.dtype))
