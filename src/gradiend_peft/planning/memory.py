"""The memory planner's formulas: the peak memory per process of GRADIEND's training, row encoding and rewrite search,
from a model's config alone (the model is built on the meta device, see `gradiend_peft.planning.meta`;
`gradiend_peft.planning.estimate.estimate_memory` is the entry point).

Notation (all counts exact, from the model built on the meta device and the adapter attached to it by the tuner's own
target resolution; ``b_x`` is bytes per number):

- ``W``: the base model's parameters (shared tensors once) and buffers, stored in the base dtype: ``b_w`` bytes each.
- ``n``: the adapter's entries (summed over target modules); ``k``: ``latent_dim``.
  ``A = 2 k n + n + k`` adapter numbers (encoder ``E``, decoder ``D``, decoder bias ``c``, encoder bias ``b_e``;
  ``2 k n + k`` without decoder bias). Stored in ``b_a`` bytes (4: float32, the default; the base dtype with
  ``autocast_adapter_dtype=False``). Trained in float32 master copies, ``b_m = 4`` (8 on a float64 base).
- ``G``: the gradient sets a step needs, ``|{source, target}|`` (2 for the default alternative -> diff);
  ``b_g = max(b_w, 4)``: gradients are upcast to float32 at least.
- ``S(B, T)``: the bytes the forward pass saves for its backward pass, for ``B`` rows (``rows_per_gradient``) of
  ``T`` tokens, traced on the meta device with ``requires_grad`` on the target weights only (so blocks below the
  first target save nothing); fused SDPA attention (``q, k, v``, output and log-sum-exp, no ``T x T`` matrix), plus
  the padding mask ``B T^2 b_w``. ``O(B, T)``: the target modules' outputs that graph does not save.
- Module sharding over ``P`` processes (the sharded trainer): each process holds the whole base model and the target
  modules of its share; ``n_p`` is the largest share when the modules (indivisible) are dealt largest first to the
  least loaded process, ``A_p = 2 k n_p + n_p + k``.

Training (one row-group step after the first, when AdamW's two moments exist; per process, ``P = 1`` for one process):

    static   = W b_w + A_p b_m  (adapter, float32 masters)  + 2 A_p b_m  (AdamW exp_avg, exp_avg_sq)
    gradient = S(B, T) + G n_p b_g (+ n_p b_w while a half-precision set is upcast)
    backward = n_p b_g (the source set, held by the loss graph) + A_p b_m (the adapter's gradients)
    peak     = static + max(gradient, backward)

Row encoding (``encode_rows`` of ``B`` rows, one backward pass for all of them):

    peak = W b_w + A_p b_a + S(B, T) + O(B, T)  (target outputs the graph does not save; the hooks hold them)
           + B T sum_{m in p} out_m b_w  (the output gradient of every target module)
           + B T k max_m out_m 4  (one module's projection, transient)

Rewrite search (run-time steering with ``cache=True``, the default; one process holds the whole adapter):

    held       = W b_w + A b_a + R T_s d b_w  (hidden states entering the first edited block, for all R search
                                                rows, texts and controls; 0 when a target sits in the first block)
    candidate  = held + n b_w  (each target's shifted weight, cached per candidate)
                 + B_s T_s V b_w  (the logits of one neutral-text batch) + B_s T_s (2 f + 4 d) b_w  (one block)
    skip check = held + 4 B_s T_s V 4  (`BlockSkip.verified` compares full and skipping logits in float32 copies;
                                        only when blocks are skipped)
    peak       = max(candidate, skip check)

``d``: hidden size, ``f``: MLP size, ``V``: vocabulary. What is not counted: the framework's own memory (the CUDA
context, allocator slack, Python objects; measured on CPU: see ``docs/guides/memory.md``), the best-adapter snapshot
the trainer keeps on the host (``A b_m`` bytes with ``restore_best_adapter``), dataloader workers, model loading.

Measured (``benchmarks/memory_planner_check.py``, ``benchmarks/results/memory_planner.json``): on SmolLM2-135M (blocks
20-29 and all blocks, float32 and bfloat16, 40 and 200 tokens) every phase is within 10% of the peak RSS when glibc
returns freed blocks at once (``MALLOC_MMAP_THRESHOLD_=131072``); with glibc's default, which keeps them, training
measures 12-24% above the plan. ``S(B, T)`` equals what autograd saves on the test models to within 64 bytes.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from ..tuner.numerics import adapter_dtype as _adapter_dtype
from .meta import TargetInfo, as_dtype, attach_targets, load_config, meta_model, trace_activations

logger = logging.getLogger(__name__)

__all__ = ["MemoryPlan", "ModelShape", "PhasePlan", "format_bytes", "parse_bytes", "plan_phases"]

GB = 1024**3
_UNITS = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": GB, "g": GB, "tb": 1024**4,
          "t": 1024**4, "kib": 1024, "mib": 1024**2, "gib": GB, "tib": 1024**4}


def parse_bytes(text: Union[str, int, float]) -> int:
    """``"80GB"``, ``"80 GiB"``, ``"512MB"`` or a number of bytes as bytes (binary units: 1 GB = 2^30 bytes)."""
    if isinstance(text, (int, float)):
        return int(text)
    import re

    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"Cannot read the memory size {text!r}: write e.g. '80GB', '24GiB' or '512MB'.")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(value: float) -> str:
    """Bytes as ``"1.23 GB"`` (binary units)."""
    for unit, size in (("TB", 1024**4), ("GB", GB), ("MB", 1024**2), ("KB", 1024)):
        if abs(value) >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{int(value)} B"


@dataclass
class ModelShape:
    """A model built on the meta device with the adapter attached to every block (``targets``); plans pick the
    blocks. ``peft_model`` is kept for the activation traces."""

    name: str
    config: Any
    model_type: str
    dtype: torch.dtype
    base_parameters: int
    base_bytes: int
    targets: list[TargetInfo]
    block_prefix: Optional[str]
    num_blocks: int
    hidden: int
    intermediate: int
    vocab: int
    peft_model: Any = field(repr=False, default=None)

    @classmethod
    def build(cls, model: Any, target_modules: Any = None, *, include_embeddings: bool = False, latent_dim: int = 1,
              decoder_bias: bool = True, dtype: Union[str, torch.dtype] = "float32") -> "ModelShape":
        """Builds ``model`` (see `load_config`) on the meta device in ``dtype`` and attaches the targets."""
        config = load_config(model)
        dtype = as_dtype(dtype)
        base = meta_model(config, dtype)
        params = list(base.parameters())
        base_parameters = sum(p.numel() for p in params)
        base_bytes = sum(p.numel() * p.element_size() for p in params)
        base_bytes += sum(b.numel() * b.element_size() for b in base.buffers())
        peft_model, targets, prefix, blocks = attach_targets(base, target_modules, include_embeddings, latent_dim,
                                                             decoder_bias)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        name = model if isinstance(model, str) else getattr(config, "_name_or_path", "") or config.model_type
        return cls(name=str(name), config=config, model_type=config.model_type, dtype=dtype,
                   base_parameters=base_parameters, base_bytes=base_bytes, targets=targets, block_prefix=prefix,
                   num_blocks=blocks, hidden=hidden, intermediate=int(intermediate),
                   vocab=int(getattr(config, "vocab_size", 0) or 0), peft_model=peft_model)

    def select(self, layers: Optional[Sequence[int]]) -> list[TargetInfo]:
        """The targets in ``layers`` (block indices; ``None``: all). Targets outside the block list (an embedding)
        stay only when ``layers`` is ``None``."""
        if layers is None:
            return list(self.targets)
        wanted = set(int(i) for i in layers)
        bad = sorted(i for i in wanted if not 0 <= i < self.num_blocks)
        if bad:
            raise ValueError(f"Layers {bad} do not exist: the model has {self.num_blocks} blocks (0-{self.num_blocks - 1}).")
        chosen = [t for t in self.targets if t.block in wanted]
        if not chosen:
            raise ValueError(f"No target module sits in layers {sorted(wanted)}.")
        return chosen

    def modules(self, targets: Sequence[TargetInfo]) -> list[torch.nn.Module]:
        """The base modules (inside the GRADIEND layers) of ``targets``."""
        layers = self.peft_model.base_model.gradiend_layers()
        return [layers[t.name].get_base_layer() for t in targets]

    def weights(self, targets: Sequence[TargetInfo]) -> list[torch.nn.Parameter]:
        return [module.weight for module in self.modules(targets)]


@dataclass
class PhasePlan:
    """The peak of one phase in one mode: ``components`` (bytes, at the peak) add up to ``peak``."""

    phase: str
    mode: str
    processes: int
    components: dict[str, int]
    peak: int
    other: dict[str, int] = field(default_factory=dict)
    """The phase's other sub-phase (training: the backward pass when the gradient pass is the peak, or the reverse)."""


@dataclass
class MemoryPlan:
    """What `estimate_memory` plans (see the module docstring for the formulas)."""

    model: str
    model_type: str
    dtype: str
    adapter_dtype: str
    base_parameters: int
    base_bytes: int
    entries: int
    adapter_numbers: int
    adapter_bytes: int
    optimizer_bytes: int
    target_modules: int
    layers: Optional[list[int]]
    num_blocks: int
    rows_per_gradient: int
    seq_len: int
    processes: int
    phases: list[PhasePlan]
    fits: Optional[dict[str, Any]] = None

    def peak(self, phase: str, mode: str = "single") -> int:
        """The planned peak (bytes) of ``phase`` (``training``, ``encoding``, ``search``) in ``mode``."""
        for plan in self.phases:
            if plan.phase == phase and plan.mode == mode:
                return plan.peak
        raise KeyError(f"No plan for {phase!r} in mode {mode!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The plan as text: the counts, then one block per phase and mode with its components."""
        blocks = "all" if self.layers is None else _ranges(self.layers)
        lines = [
            f"{self.model} ({self.model_type}, {self.dtype}): {self.base_parameters:,} parameters "
            f"({format_bytes(self.base_bytes)}), {self.num_blocks} blocks; targets: {self.target_modules} modules in "
            f"blocks {blocks}, n = {self.entries:,}",
            f"adapter: {self.adapter_numbers:,} numbers = {format_bytes(self.adapter_bytes)} stored in "
            f"{self.adapter_dtype}; AdamW state {format_bytes(self.optimizer_bytes)} (float32)",
            f"rows_per_gradient {self.rows_per_gradient}, {self.seq_len} tokens; {self.processes} process(es)",
            "",
        ]
        for plan in self.phases:
            title = "one process" if plan.mode == "single" else f"module-sharded, {plan.processes} processes"
            lines.append(f"{plan.phase} ({title}): peak {format_bytes(plan.peak)} per process")
            for key, value in plan.components.items():
                lines.append(f"    {key:<44} {format_bytes(value):>12}")
            if plan.other:
                lines.append(f"    (other sub-phase: {format_bytes(sum(plan.other.values()))})")
        if self.fits:
            lines.append("")
            lines += self.fits.get("lines", [])
        return "\n".join(lines)


def _ranges(values: Sequence[int]) -> str:
    values = sorted(values)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def largest_share(entries: Sequence[int], processes: int) -> tuple[int, list[int]]:
    """The largest per-process share when modules (indivisible, of ``entries`` each) are dealt largest first to the
    least loaded of ``processes``; returns ``(largest share, indices of the modules in it)``."""
    heap = [(0, p, []) for p in range(max(1, processes))]
    for index in sorted(range(len(entries)), key=lambda i: -entries[i]):
        load, p, members = heapq.heappop(heap)
        heapq.heappush(heap, (load + entries[index], p, members + [index]))
    load, _, members = max(heap)
    return load, members


@dataclass(frozen=True)
class Settings:
    """What a plan depends on besides the model and its targets."""

    latent_dim: int = 1
    decoder_bias: bool = True
    autocast_adapter_dtype: bool = True
    rows_per_gradient: int = 32
    seq_len: int = 64
    processes: int = 1
    gradient_sets: int = 2
    loss_kinds: int = 2
    search_rows: int = 600
    search_batch_size: int = 32
    search_seq_len: Optional[int] = None


def plan_phases(shape: ModelShape, targets: Sequence[TargetInfo], s: Settings) -> tuple[dict[str, Any], list[PhasePlan]]:
    """The counts and the per-phase plans for ``targets`` of ``shape`` (see the module docstring)."""
    k, b_w = s.latent_dim, torch.finfo(shape.dtype).bits // 8
    store = _adapter_dtype(shape.dtype, s.autocast_adapter_dtype)
    b_a = torch.finfo(store).bits // 8
    b_m = 8 if shape.dtype == torch.float64 else 4
    b_g = max(b_w, 4)
    per_entry = 2 * k + (1 if s.decoder_bias else 0)
    n = sum(t.entries for t in targets)
    numbers = per_entry * n + k
    B, T = s.rows_per_gradient, s.seq_len
    trace = trace_activations(shape.peft_model, shape.weights(targets), B, T, loss_kinds=s.loss_kinds)
    mask = B * T * T * b_w
    encode_trace = trace_activations(shape.peft_model, shape.weights(targets), B, T, loss_kinds=1,
                                     modules=shape.modules(targets))
    counts = {"entries": n, "adapter_numbers": numbers, "adapter_bytes": numbers * b_a,
              "optimizer_bytes": 2 * numbers * b_m, "adapter_dtype": str(store).replace("torch.", ""),
              "activations": trace["saved"]}
    phases = []
    modes = [("single", 1)] + ([("sharded", s.processes)] if s.processes > 1 else [])
    for mode, P in modes:
        n_p, members = largest_share([t.entries for t in targets], P)
        numbers_p = per_entry * n_p + k
        upcast = n_p * b_w if b_w < 4 else 0
        static = {"base weights": shape.base_bytes, "adapter (float32 masters)": numbers_p * b_m,
                  "AdamW state (2 moments)": 2 * numbers_p * b_m}
        gradient = {"activations saved for backward": trace["saved"], "attention mask": mask,
                    f"base-model gradients ({s.gradient_sets} sets)": s.gradient_sets * n_p * b_g}
        if upcast:
            gradient["half-precision gradient being upcast"] = upcast
        backward = {"source gradient held by the loss graph": n_p * b_g, "adapter gradients": numbers_p * b_m}
        peak_part, other = (gradient, backward) if sum(gradient.values()) >= sum(backward.values()) else (backward, gradient)
        components = {**static, **peak_part}
        phases.append(PhasePlan("training", mode, P, components, sum(components.values()),
                                {**static, **other}))
        outs = sum(targets[i].out_per_token for i in members)
        all_outs = sum(t.out_per_token for t in targets)
        widest = max((t.out_per_token for t in targets), default=0)
        encode = {"base weights": shape.base_bytes, f"adapter ({counts['adapter_dtype']})": numbers_p * b_a,
                  "activations saved for backward": encode_trace["saved"], "attention mask": mask,
                  "target outputs held by the hooks": int(encode_trace["unsaved_outputs"] * outs / max(1, all_outs)),
                  "output gradients of the target modules": B * T * outs * b_w,
                  "one module's projection (transient)": B * T * k * widest * 4}
        phases.append(PhasePlan("encoding", mode, P, encode, sum(encode.values())))
    Ts = s.search_seq_len or T
    Bs = s.search_batch_size
    skips = all(t.block is not None for t in targets) and min(t.block for t in targets) > 0
    held = {"base weights": shape.base_bytes, f"adapter ({counts['adapter_dtype']})": numbers * b_a,
            "hidden states below the first edited block": s.search_rows * Ts * shape.hidden * b_w if skips else 0}
    candidates = {**held, "shifted target weights (steering cache)": n * b_w,
                  "logits of one neutral-text batch": Bs * Ts * shape.vocab * b_w,
                  "one block's temporaries": Bs * Ts * (2 * shape.intermediate + 4 * shape.hidden) * b_w}
    check = {**held, "skip check: 4 float32 copies of one batch's logits": 4 * Bs * Ts * shape.vocab * 4} if skips else {}
    search, other = (candidates, check) if sum(candidates.values()) >= sum(check.values()) else (check, candidates)
    phases.append(PhasePlan("search", "single", 1, search, sum(search.values()), other))
    return counts, phases
