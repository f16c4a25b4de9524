"""`GradiendModel`: the PEFT tuner that attaches GRADIEND to a transformers model."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .config import GradiendConfig, adapter_origin, check_modules_to_save, check_target_shapes
from .constants import ADAPTER_PREFIX, TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING, infer_objective
from .layer import Embedding, GradiendLayer, layer_class_for
from .file_hooks import PeftFileHooks, never_loaded
from .merging import MergingMixin

_ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leakyrelu": nn.functional.leaky_relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "elu": nn.functional.elu,
    "sigmoid": torch.sigmoid,
    "hardtanh": nn.functional.hardtanh,
    "id": lambda x: x,
}


class GradiendModel(MergingMixin, PeftFileHooks, BaseTuner):
    """Creates a GRADIEND model (a gradient encoder-decoder over target modules) from a transformers model.

    Use it through peft: ``get_peft_model(base_model, GradiendConfig(...))``. It does the weight-space maths of the
    method: encode a given gradient (`encode_gradients`, `latent_from_dots`), decode (`decode`), compare a decoding
    with a given gradient (`reconstruction_error`), merges with a ``feature_factor`` and ``lr`` (`merge_adapter`,
    `merge_and_unload`) and run-time steering (`steer`). Computing the base model's gradients from rows, the
    training losses and row encodings live in `gradiend_peft.objective`. Unmerged and unsteered, the model's
    outputs are the base model's, bit for bit (``torch.equal`` in ``tests/test_peft_contract.py``).

    The shared encoder bias ``b_e`` of each adapter lives here (``gradiend_encoder_bias``), as does its gradient
    scale ``s`` (``gradiend_gradient_scale``, 0 until calibrated on the first training batch).

    Dtypes (peft's ``autocast_adapter_dtype`` of ``get_peft_model``, ``add_adapter``, ``PeftModel.from_pretrained``
    and ``load_adapter``): ``True``, the default, stores the adapter in float32 whatever the base dtype (float32
    master weights beside a bfloat16/float16 base; float64 on a float64 base); ``False`` stores it in the base
    weights' dtype (bfloat16 storage halves the adapter, which is 2-3x the size of the weights it targets). Either way
    encoding, decoding and the shift of a merge or of steering are computed in float32 and a merge rounds once to
    the base dtype; the gradient scale stays float32 (also through ``model.to(dtype)``). `GradiendTrainer` trains a
    bfloat16/float16-stored adapter as float32 master weights and rounds it back once at the end.

    Inference mode (``PeftModel.from_pretrained`` without ``is_trainable=True``, or
    ``GradiendConfig(inference_mode=True)``) freezes every parameter of the adapter, the encoder bias included.
    ``low_cpu_mem_usage=True`` creates the adapter on the meta device and lets loading materialise it.
    """

    prefix: str = ADAPTER_PREFIX
    tuner_layer_cls = GradiendLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING
    uses_shared_state: bool = True

    # ------------------------------------------------------------------------------------------ injection
    def _prepare_adapter_config(self, peft_config: GradiendConfig, model_config: dict) -> GradiendConfig:
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            default = self.target_module_mapping.get(model_type)
            if default is None:
                raise ValueError(
                    f"GRADIEND has no default target modules for model type {model_type!r}. Pass target_modules, "
                    f"e.g. GradiendConfig(target_modules='all-linear') or a list of module names. Known defaults: "
                    f"{sorted(self.target_module_mapping)}."
                )
            peft_config.target_modules = default
        peft_config.check_patterns()  # again: a pattern may have been set after the config was made
        if peft_config.objective == "auto":
            peft_config.objective = infer_objective(self.model)
        return peft_config

    def _check_target_module_exists(self, peft_config: GradiendConfig, key: str) -> Any:
        if peft_config.target_shapes is not None:
            # a saved (or copied) adapter targets exactly the modules it recorded: no pattern is matched, so a
            # crafted target_modules regex cannot stall loading
            return key in peft_config.target_shapes
        if peft_config.include_embeddings:
            if self.__dict__.get("_embedding_target") is None:
                self.__dict__["_embedding_target"] = self._embedding_name()
            if key == self.__dict__["_embedding_target"]:
                return True
        return super()._check_target_module_exists(peft_config, key)

    def _embedding_name(self) -> Optional[str]:
        getter = getattr(self.model, "get_input_embeddings", None)
        embedding = getter() if getter is not None else None
        if embedding is None:
            return None
        for name, module in self.model.named_modules():
            if module is embedding:
                return name
            if isinstance(module, Embedding) and module.get_base_layer() is embedding:
                return name
        return None

    def _check_new_adapter_config(self, config: GradiendConfig) -> None:
        super()._check_new_adapter_config(config)
        check_modules_to_save(getattr(config, "modules_to_save", None))  # also for a config changed after creation

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
        config: GradiendConfig = self.peft_config[adapter_name]
        loading = config.target_shapes is not None
        self.__dict__["_embedding_target"] = None
        # peft restores the trainability of the base model's existing parameters after an injection, but not of the
        # tuner's own: keep the other adapters' encoder biases as they are
        trainable = {name: bias.requires_grad for name, bias in getattr(self, "gradiend_encoder_bias", {}).items()}
        try:
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                   low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        except ValueError as err:
            if "not found in the base model" not in str(err) and "No modules were targeted" not in str(err):
                raise
            candidates = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if layer_class_for(m)})
            if loading:
                raise type(err)(
                    f"This GRADIEND adapter ({adapter_origin(config)}) does not fit this model: it targets modules "
                    f"{sorted(config.target_shapes)[:5]} (its target_shapes), and this model has none of them (its "
                    f"Linear/Conv1D/Embedding module names end in {candidates}). Load it onto the base model it was "
                    "trained on."
                ) from err
            raise type(err)(
                f"{err} GRADIEND found no module matching target_modules={config.target_modules!r}. The model's "
                f"Linear/Conv1D/Embedding module names end in: {candidates}. Pass some of these, a regular expression "
                "over full module names, or target_modules='all-linear'."
                + (f" This adapter was made for {config.base_model_name_or_path!r}." if loading else "")
            ) from err
        layers = self.gradiend_layers(adapter_name)
        shapes = {name: list(layer.weight_shape) for name, layer in layers.items()}
        stray = sorted(set(config.kept_entries or {}) - set(layers))
        if stray:
            raise ValueError(
                f"kept_entries names modules that adapter {adapter_name!r} does not target: {stray[:5]}. Pruning "
                "records only targeted modules; remove these entries or add the modules to target_modules."
            )
        if loading:
            check_target_shapes(config, shapes)
        else:
            config.target_shapes = shapes
        self._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)  # the encoder bias joins its layers' dtype
        for name, bias in self.gradiend_encoder_bias.items():
            bias.requires_grad_(trainable[name] if name in trainable else
                                name in self.active_adapters and not config.inference_mode)
        self._initialize_adapter(adapter_name)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None

    def _create_and_replace(self, peft_config: GradiendConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **optional_kwargs: Any) -> None:
        self._ensure_shared_state(adapter_name, peft_config)
        kept = (peft_config.kept_entries or {}).get(current_key)
        if peft_config.kept_entries is not None and kept is None:
            raise ValueError(f"The pruned adapter {adapter_name!r} records no kept entries for module {current_key!r}.")
        if isinstance(target, GradiendLayer):
            target.update_layer(adapter_name, peft_config.latent_dim, peft_config.decoder_bias, kept)
            return
        layer_cls = layer_class_for(target)
        if layer_cls is None:
            raise TypeError(
                f"Target module {current_key!r} is a {type(target).__name__}, which GRADIEND does not support. "
                "GRADIEND targets torch.nn.Linear, transformers' Conv1D and torch.nn.Embedding modules; narrow "
                "target_modules to those (e.g. target_modules='all-linear')."
            )
        new_module = layer_cls(target, adapter_name, peft_config.latent_dim, peft_config.decoder_bias, kept)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _ensure_shared_state(self, adapter_name: str, config: GradiendConfig) -> None:
        if "gradiend_encoder_bias" not in self._modules:
            self.gradiend_encoder_bias = nn.ParameterDict({})
            self.gradiend_gradient_scale = BufferDict({}, persistent=True)
        if adapter_name not in self.gradiend_encoder_bias:
            self.gradiend_encoder_bias[adapter_name] = nn.Parameter(torch.zeros(config.latent_dim))
            self.gradiend_gradient_scale[adapter_name] = torch.zeros((), dtype=torch.float32)
            self.gradiend_encoder_bias[adapter_name].requires_grad_(adapter_name in self.active_adapters)

    def reset_adapter(self, adapter_name: Optional[str] = None, seed: Optional[int] = None) -> None:
        """Re-draws the adapter's encoder and decoder (as at creation) and clears its gradient scale.

        Args:
            adapter_name (`str`, *optional*): The adapter (default: the active one).
            seed (`int`, *optional*): Stored as ``config.init_seed`` and used for the draw (default: the config's).
        """
        name = self.resolve_adapter(adapter_name)
        self.check_unmerged("reset_adapter")
        self.check_complete(name, "reset_adapter (the draw depends on every module)")
        if seed is not None:
            self.peft_config[name].init_seed = int(seed)
        self._initialize_adapter(name)
        self.gradiend_gradient_scale[name].zero_()

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """GRADIEND's dtype policy (see the class docstring); peft calls this after creating or loading an adapter.

        Each layer's ``E``, ``D``, ``c`` take `adapter_dtype` of its base weight, the shared encoder bias the widest of
        those, and the gradient scale stays float32. ``requires_grad`` is kept (peft's own cast re-creates frozen
        parameters as trainable ones)."""
        dtypes = [layer.cast_adapter(adapter_name, autocast_adapter_dtype)
                  for layer in self.gradiend_layers(adapter_name).values()]
        if adapter_name not in getattr(self, "gradiend_encoder_bias", {}):
            return
        dtype = functools.reduce(torch.promote_types, dtypes, dtypes[0]) if dtypes else torch.float32
        bias = self.gradiend_encoder_bias[adapter_name]
        if bias.dtype != dtype:
            self.gradiend_encoder_bias[adapter_name] = nn.Parameter(bias.detach().to(dtype),
                                                                    requires_grad=bias.requires_grad)
        scale = self.gradiend_gradient_scale[adapter_name]
        if scale.dtype != torch.float32:
            self.gradiend_gradient_scale[adapter_name] = scale.to(torch.float32)

    def _apply(self, fn, recurse: bool = True):
        # ``model.to(torch.bfloat16)``, ``.half()``: the adapter follows the user's cast, the gradient scale (one
        # number that every merge divides by) stays float32
        scales = dict(self.gradiend_gradient_scale.items()) if "gradiend_gradient_scale" in self._modules else {}
        result = super()._apply(fn, recurse)
        for name, old in scales.items():
            new = self.gradiend_gradient_scale[name]
            if new.dtype != old.dtype:
                self.gradiend_gradient_scale[name] = old.to(new.device)
        return result

    @torch.no_grad()
    def _initialize_adapter(self, adapter_name: str) -> None:
        """Encoder and its bias ~ U(-1/sqrt(n), 1/sqrt(n)) as an ``nn.Linear(n, k)``; decoder weight and bias ~
        U(-x, x) with ``x`` the largest encoder weight (the reference implementation's scheme). Nothing is drawn for
        an adapter created on the meta device (``low_cpu_mem_usage=True``): loading gives its values."""
        config: GradiendConfig = self.peft_config[adapter_name]
        layers = self.gradiend_layers(adapter_name)
        tensors = [self.gradiend_encoder_bias[adapter_name]]
        tensors += [t for layer in layers.values() for t in layer.adapter_tensors(adapter_name)]
        if any(t.is_meta for t in tensors):
            return
        n = sum(layer.num_entries(adapter_name) for layer in layers.values())
        bound = 1.0 / math.sqrt(n)
        generator = torch.Generator().manual_seed(config.init_seed) if config.init_seed is not None else None

        def uniform_(tensor: torch.Tensor, limit: float) -> None:
            values = torch.rand(tensor.shape, generator=generator, dtype=torch.float32) * (2 * limit) - limit
            tensor.copy_(values.to(tensor.device, tensor.dtype))

        largest = 0.0
        for layer in layers.values():
            uniform_(layer.gradiend_encoder[adapter_name], bound)
            if layer.gradiend_encoder[adapter_name].numel():
                largest = max(largest, float(layer.gradiend_encoder[adapter_name].abs().max()))
        uniform_(self.gradiend_encoder_bias[adapter_name], bound)
        for layer in layers.values():
            uniform_(layer.gradiend_decoder[adapter_name], largest)
            if adapter_name in layer.gradiend_decoder_bias:
                uniform_(layer.gradiend_decoder_bias[adapter_name], largest)

    # ------------------------------------------------------------------- adapter bookkeeping (tuner-level)
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name, bias in self.gradiend_encoder_bias.items():
            bias.requires_grad_(name in names and not inference_mode)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for name in names & set(self.gradiend_encoder_bias):
            self.gradiend_encoder_bias[name].requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.gradiend_encoder_bias[adapter_name]
        del self.gradiend_gradient_scale[adapter_name]

    def gradiend_layers(self, adapter_name: Optional[str] = None) -> dict[str, GradiendLayer]:
        """Target module name -> GRADIEND layer (only layers holding ``adapter_name`` when given)."""
        return {
            name: module
            for name, module in self.model.named_modules()
            if isinstance(module, GradiendLayer) and (adapter_name is None or adapter_name in module.gradiend_encoder)
        }

    # ------------------------------------------------------- the adapter's tensors: list, restrict, drop
    def adapter_state_dict(self, adapter_name: Optional[str] = None, shared: bool = True) -> dict[str, torch.Tensor]:
        """The adapter's tensors held by this model, under the names its saved file uses
        (``base_model.model.<module>.gradiend_encoder``, ...; ``base_model.gradiend_encoder_bias`` and
        ``base_model.gradiend_gradient_scale`` with ``shared=True``). The live tensors, not copies: snapshots, saving
        one process's share of a module-sharded adapter and restoring it go through this one listing.
        """
        name = self.resolve_adapter(adapter_name)
        state: dict[str, torch.Tensor] = {}
        if shared:
            state["base_model.gradiend_encoder_bias"] = self.gradiend_encoder_bias[name]
            state["base_model.gradiend_gradient_scale"] = self.gradiend_gradient_scale[name]
        for module, layer in self.gradiend_layers(name).items():
            for container, tensor in layer.named_adapter_tensors(name).items():
                state[f"base_model.model.{module}.{container}"] = tensor
        return state

    def adapter_parameters(self, adapter_name: Optional[str] = None) -> list[nn.Parameter]:
        """The adapter's trainable tensors held by this model: the encoder bias, then each module's ``E``, ``D``,
        ``c`` (the parameters among `adapter_state_dict`)."""
        return [t for t in self.adapter_state_dict(adapter_name).values() if isinstance(t, nn.Parameter)]

    def restrict_entries(self, adapter_name: str, positions: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Keeps only the input entries at ``positions`` (per target module, positions among its current entries) and
        records ``config.kept_entries``; returns it. Rebuild any optimizer afterwards (the parameters are new)."""
        name = self.resolve_adapter(adapter_name)
        self.check_unmerged("Restricting the adapter's entries (pruning)")
        layers = self.gradiend_layers(name)
        missing = sorted(set(layers) - set(positions))
        if missing:
            raise KeyError(f"No kept positions for target modules {missing[:5]} of adapter {name!r}.")
        for module, layer in layers.items():
            layer.restrict(name, positions[module])
        self.peft_config[name].kept_entries = {m: layer.num_entries(name) for m, layer in layers.items()}
        return dict(self.peft_config[name].kept_entries)

    def drop_modules(self, adapter_name: str, keep: set[str]) -> int:
        """Frees the adapter's tensors in every target module not in ``keep`` (modules other processes hold in a
        module-sharded run); returns the bytes freed. The model then holds a share of the adapter: its encodings,
        merges and steering refuse to run (`check_complete`); the objective with a shard and saving work on it.

        Raises:
            `ValueError`: if the model lacks a module of ``keep`` (it was sharded differently before).
        """
        name = self.resolve_adapter(adapter_name)
        layers = self.gradiend_layers(name)
        missing = sorted(set(keep) - set(layers))
        if missing:
            raise ValueError(f"This process's shard needs modules {missing[:3]} of adapter {name!r}, which the model "
                             "no longer holds (it was sharded before). Create the model anew for each sharded run.")
        return sum(layer.drop(name) for module, layer in layers.items() if module not in keep)

    def resolve_adapter(self, adapter_name: Optional[str]) -> str:
        name = adapter_name or self.active_adapters[0]
        if name not in self.peft_config:
            raise ValueError(f"Unknown adapter {name!r}; this model has {sorted(self.peft_config)}.")
        return name

    # ------------------------------------------------------------------------------- encoding / decoding
    def gradient_scale(self, adapter_name: Optional[str] = None) -> float:
        """The factor ``s`` applied to gradients before encoding and reconstruction (1 if not normalising)."""
        name = self.resolve_adapter(adapter_name)
        if not self.peft_config[name].normalize_gradients:
            return 1.0
        value = float(self.gradiend_gradient_scale[name])
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"The gradient scale of adapter {name!r} is {value}; it must be finite and positive (0 "
                             "before calibration). The adapter's tensors are corrupt: retrain or reload it.")
        return value if value > 0 else 1.0

    def calibrate_gradient_scale(self, gradients: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None,
                                 reduce_moments: Optional[Callable[[float, int], tuple[float, int]]] = None) -> float:
        """Sets ``s = 1 / RMS(gradients)`` over the adapter's entries if not calibrated yet; returns ``s``.

        The first call decides the scale for good. Calibrate explicitly on a training row group before anything else
        encodes (`GradiendTrainer` does, identically on every process); otherwise
        `gradiend_peft.objective.reconstruction_loss` calibrates
        on whatever batch comes first.

        Args:
            gradients (`Mapping[str, torch.Tensor]`): Module name -> weight-shaped gradient, for the adapter's modules.
            adapter_name (`str`, *optional*): The adapter (default: the active one).
            reduce_moments (`Callable`, *optional*): Maps this process's ``(sum of squares, entry count)`` to the
                totals over all the adapter's modules; for an adapter whose modules are split over processes
                (`gradiend_peft.objective.sharded` passes an all-reduce). Default: the given gradients are all.
        """
        name = self.resolve_adapter(adapter_name)
        if not self.peft_config[name].normalize_gradients or float(self.gradiend_gradient_scale[name]) > 0:
            return self.gradient_scale(name)
        layers = self.gradiend_layers(name)
        squares = sum(float(layers[m].select(name, g).double().pow(2).sum()) for m, g in gradients.items())
        count = sum(layers[m].num_entries(name) for m in gradients)
        if reduce_moments is not None:
            squares, count = reduce_moments(squares, count)
        rms = math.sqrt(squares / max(count, 1))
        if not math.isfinite(rms) or rms == 0.0:
            raise ValueError(f"Cannot calibrate the gradient scale: the gradients' RMS is {rms}.")
        self.gradiend_gradient_scale[name].fill_(1.0 / rms)
        return 1.0 / rms

    def activation(self, adapter_name: Optional[str] = None):
        """The encoder's activation function (a callable on tensors) of ``adapter_name`` (default: the active one)."""
        return _ACTIVATIONS[self.peft_config[self.resolve_adapter(adapter_name)].activation]

    def num_entries(self, adapter_name: Optional[str] = None) -> int:
        """The adapter's input entries ``n`` (summed over all its target modules, also those another process holds
        in module sharding; fewer when pruned): ``sum(config.module_entries().values())``."""
        return sum(self.peft_config[self.resolve_adapter(adapter_name)].module_entries().values())

    def latent_from_dots(self, dots: torch.Tensor, adapter_name: Optional[str] = None) -> torch.Tensor:
        """``h = act(s * dots + b_e)`` for encoder dot products ``dots = sum_m <E_m, g_m>`` of shape ``(..., k)``."""
        name = self.resolve_adapter(adapter_name)
        bias = self.gradiend_encoder_bias[name]
        return self.activation(name)(self.gradient_scale(name) * dots.to(bias.device) + bias)

    def encoder_dots(self, gradients: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None) -> torch.Tensor:
        """``sum_m <E_m, g_m>`` over the modules holding the adapter in this model (unscaled): shape ``(k,)``.

        `encode_gradients` turns it into the latent; an adapter whose modules are split over processes sums these
        partial dot products over the processes first (`gradiend_peft.objective.sharded`).
        """
        name = self.resolve_adapter(adapter_name)
        layers = self.gradiend_layers(name)
        missing = set(layers) - set(gradients)
        if missing:
            raise KeyError(f"Gradients are missing for target modules {sorted(missing)[:5]}.")
        device = self.gradiend_encoder_bias[name].device
        return sum(layers[m].encoder_dot(name, gradients[m]).to(device) for m in layers)

    def encode_gradients(self, gradients: Mapping[str, torch.Tensor], adapter_name: Optional[str] = None) -> torch.Tensor:
        """``h = act(s * sum_m <E_m, g_m> + b_e)`` for one module-shaped gradient: shape ``(k,)``.

        The gradient is given (module name -> weight-shaped tensor); `gradiend_peft.objective` computes it from rows.
        """
        name = self.resolve_adapter(adapter_name)
        self.check_complete(name, "Encoding a gradient")
        return self.latent_from_dots(self.encoder_dots(gradients, name), name)

    def check_complete(self, adapter_name: str, what: str) -> None:
        """Refuses ``what`` for an adapter that this model holds only a share of (one process's modules of a
        module-sharded training run): the encoding, a merge or steering need every module.

        Raises:
            `RuntimeError`: naming the modules held and how to get the whole adapter.
        """
        recorded = self.peft_config[adapter_name].target_shapes
        held = self.gradiend_layers(adapter_name)
        meta = [name for name, layer in held.items() if any(t.is_meta for t in layer.adapter_tensors(adapter_name))]
        if meta or self.gradiend_encoder_bias[adapter_name].is_meta:
            raise RuntimeError(never_loaded(adapter_name, what, meta))
        if recorded is not None and len(held) < len(recorded):
            raise RuntimeError(
                f"{what} needs the whole adapter {adapter_name!r}, but this model holds {len(held)} of its "
                f"{len(recorded)} target modules: it is one process's shard of a module-sharded training run "
                "(GradiendTrainingArguments(adapter_shards=...)). Save it with trainer.save_model(folder) on every "
                "process and load the whole adapter in one process with gradiend_peft.load_gradiend_model."
            )

    def reconstruction_error(self, latent: torch.Tensor, gradients: Mapping[str, torch.Tensor],
                             adapter_name: Optional[str] = None) -> torch.Tensor:
        """``sum_m ||d_m(h) - s * g_m||^2`` for a latent ``h`` and a given module-shaped gradient ``g`` (the decoder's
        target), summed over the adapter's entries; differentiable w.r.t. the adapter."""
        name = self.resolve_adapter(adapter_name)
        scale = self.gradient_scale(name)
        return sum(layer.reconstruction_error(name, latent, gradients[m] * scale)
                   for m, layer in self.gradiend_layers(name).items())

    def decode(self, latent: torch.Tensor | float, adapter_name: Optional[str] = None) -> dict[str, torch.Tensor]:
        """``d_m(h) / s`` per target module, shaped like the weights (gradient units). Allocates n floats."""
        name = self.resolve_adapter(adapter_name)
        self.check_complete(name, "Decoding")
        scale = self.gradient_scale(name)
        k = self.peft_config[name].latent_dim
        latent = torch.as_tensor(latent, dtype=torch.float32).reshape(-1).expand(k)
        return {m: layer.delta_weight(name, latent, 1.0, scale) for m, layer in self.gradiend_layers(name).items()}

    def feature_factor_for(self, class_name: str, strengthen: bool = True, adapter_name: Optional[str] = None) -> float:
        """The feature factor that strengthens (or weakens) ``class_name``: ``-sign`` for a factual or diff source,
        ``+sign`` for an alternative source (the reference implementation's convention), negated to weaken."""
        config = self.peft_config[self.resolve_adapter(adapter_name)]
        if not config.class_signs or class_name not in config.class_signs:
            raise ValueError(f"Unknown class {class_name!r}; the adapter's classes are {config.feature_classes}.")
        sign = config.class_signs[class_name]
        factor = sign if config.source == "alternative" else -sign
        return factor if strengthen else -factor



def tuner_of(model: Any) -> GradiendModel:
    """The `GradiendModel` of a `peft.PeftModel` around GRADIEND (``model.base_model``), or the tuner itself.

    Raises:
        `TypeError`: for anything else, naming what was given and how to make a GRADIEND model.
    """
    tuner = model if isinstance(model, GradiendModel) else getattr(model, "base_model", None)
    if not isinstance(tuner, GradiendModel):
        inner = f" whose tuner is a {type(tuner).__name__}" if tuner is not None else ""
        raise TypeError(
            f"Expected a GRADIEND model, got a {type(model).__name__}{inner}. Wrap the base model first: "
            "model = peft.get_peft_model(base_model, GradiendConfig(...)) (or pass its .base_model)."
        )
    return tuner

