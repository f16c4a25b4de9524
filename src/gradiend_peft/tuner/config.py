"""`GradiendConfig`: the configuration of a GRADIEND adapter."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

from .constants import ACTIVATIONS, GRADIENT_KINDS, MAX_LATENT_DIM, OBJECTIVES, PEFT_TYPE_NAME


@dataclass
class GradiendConfig(PeftConfig):
    """Configuration of a GRADIEND adapter: a gradient encoder-decoder over chosen target modules.

    GRADIEND encodes the gradient ``g`` of the language-modelling loss w.r.t. the target weights into a small
    latent ``h = act(sum_m <E_m, s * g_m> + b_e)`` and decodes it back, ``d_m(h) = sum_j h_j D_m,j + c_m``, per
    target module, in the units of ``s * g``. ``s`` is the gradient scale: the factor that brings the first training
    batch's gradient to unit RMS when ``normalize_gradients`` is on (the default), else 1. Merging writes
    ``W_m += lr * d_m(feature_factor) / s`` into the base weights, so ``lr`` acts on raw-gradient units.

    Args:
        target_modules (`list[str]` or `str`, *optional*):
            Module names (suffix match), a regular expression (full match), or ``"all-linear"``. ``None`` takes the
            per-architecture default (every attention and MLP projection of every block). A regular expression whose
            matching could backtrack for minutes is refused (`check_pattern_cost`). With ``target_shapes`` (every
            saved adapter's config) exactly the recorded modules are targeted and no pattern is matched.
        exclude_modules (`list[str]` or `str`, *optional*): Modules never targeted.
        layers_to_transform (`list[int]` or `int`, *optional*): Only these block indices (with list targets).
        layers_pattern (`list[str]` or `str`, *optional*): The name of the block list, e.g. ``"layers"``.
        include_embeddings (`bool`): Also target the input embedding matrix.
        latent_dim (`int`): Size ``k`` of the latent feature (1 in the papers).
        activation (`str`): Encoder activation, one of ``tanh`` (default), ``relu``, ``leakyrelu``, ``gelu``,
            ``silu``, ``elu``, ``sigmoid``, ``hardtanh``, ``id``.
        decoder_bias (`bool`): Whether the decoder has a bias ``c`` (needed for ``feature_factor=0`` edits).
        source (`str`): The gradient the encoder reads: ``factual``, ``alternative`` (default) or ``diff``.
        target (`str`): The gradient the decoder reconstructs: ``factual``, ``alternative`` or ``diff`` (default).
        feature_classes (`list[str]`, *optional*): The two class names of the feature, e.g. ``["M", "F"]``.
        class_signs (`dict[str, float]`, *optional*): The encoding sign of each class; defaults to ``+1`` for
            ``feature_classes[0]`` and ``-1`` for ``feature_classes[1]``. Persisted with the adapter.
        objective (`str`): ``masked_lm``, ``causal_lm`` or ``auto`` (decided from the base model).
        normalize_gradients (`bool`): Bring gradients to unit RMS before encoding and reconstruction (the scale is
            calibrated once, on the first training batch, and saved with the adapter). Merges stay in the units of
            the raw gradient, so ``lr`` means what it means in the reference implementation.
        feature_factor (`float`, *optional*): Default feature factor for `merge_and_unload`.
        lr (`float`, *optional*): Default learning rate for `merge_and_unload`.
        init_seed (`int`, *optional*): Seed of the adapter's initialisation (default: torch's global RNG).
        kept_entries (`dict[str, int]`, *optional*): Set by pruning: how many input entries each module keeps.
        target_shapes (`dict[str, list[int]]`, *optional*): Recorded at injection: each target weight's shape,
            used to refuse an adapter loaded onto a base model of other shapes.
        modules_to_save (`list[str]`, *optional*): Refused (must stay ``None``): GRADIEND's objective trains only its
            encoder-decoder, so a module saved beside it would never be trained (see `check_modules_to_save`).
        weights_digest (`str`, *optional*): Set by saving (``sha256:`` and 64 hex digits): the digest of the weights
            saved beside this config. Loading refuses weights with another digest (the files of two saves) and then
            clears it; leave it ``None``.

    Dtypes are chosen where the adapter is created or loaded, by peft's ``autocast_adapter_dtype`` argument of
    ``get_peft_model`` / ``add_adapter`` / ``PeftModel.from_pretrained`` / ``load_adapter``: ``True`` (default)
    stores the adapter in float32 (float32 master weights; the base may be bfloat16 or float16), ``False`` in the
    base weights' dtype (bfloat16 storage halves the adapter). Merges and steering compute the shift in float32 either
    way and round once to the base dtype. ``inference_mode=True`` freezes every adapter parameter.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (suffix match), a regex (full match) or 'all-linear'; None: architecture default."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of modules never to target."}
    )
    target_parameters: Optional[list[str]] = field(
        default=None, metadata={"help": "Unsupported by GRADIEND; kept because peft reads it. Must stay None."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only target these block indices (list target_modules only)."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the module list holding the blocks, e.g. 'layers' or 'h'."}
    )
    include_embeddings: bool = field(default=False, metadata={"help": "Also target the input embedding matrix."})
    latent_dim: int = field(default=1, metadata={"help": "Size of the latent feature (1 in the papers)."})
    activation: str = field(default="tanh", metadata={"help": f"Encoder activation, one of {ACTIVATIONS}."})
    decoder_bias: bool = field(default=True, metadata={"help": "Whether the decoder has a bias."})
    source: str = field(default="alternative", metadata={"help": "Encoder input: factual, alternative or diff."})
    target: str = field(default="diff", metadata={"help": "Decoder target: factual, alternative or diff."})
    feature_classes: Optional[list[str]] = field(
        default=None, metadata={"help": "The two class names of the feature, e.g. ['M', 'F']."}
    )
    class_signs: Optional[dict[str, float]] = field(
        default=None, metadata={"help": "Encoding sign per class; default +1 for the first class, -1 for the second."}
    )
    objective: str = field(default="auto", metadata={"help": f"One of {('auto', *OBJECTIVES)}."})
    normalize_gradients: bool = field(
        default=True, metadata={"help": "Bring gradients to unit RMS (scale calibrated once, saved)."}
    )
    feature_factor: Optional[float] = field(default=None, metadata={"help": "Default feature factor for merging."})
    lr: Optional[float] = field(default=None, metadata={"help": "Default learning rate for merging."})
    init_seed: Optional[int] = field(default=None, metadata={"help": "Seed of the adapter initialisation."})
    kept_entries: Optional[dict[str, int]] = field(
        default=None, metadata={"help": "Set by pruning: number of kept input entries per module."}
    )
    target_shapes: Optional[dict[str, list[int]]] = field(
        default=None, metadata={"help": "Recorded at injection: the shape of every target weight."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Unsupported by GRADIEND (its objective would never train them); must stay None."},
    )
    weights_digest: Optional[str] = field(
        default=None,
        metadata={"help": "Set by saving: the digest of the weights saved with this config; a load refuses others."},
    )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """Reads the config of a saved adapter (a folder or a Hub repository), after checking the folder: what
        ``PeftModel.from_pretrained`` and ``load_adapter`` call first (`gradiend_peft.tuner.persistence` lists the
        checks; the weights' tensors are checked when peft loads them).

        Raises:
            `gradiend_peft.UntrustedAdapterError`: for a malformed, inconsistent or unsafe folder (the message names
                the problem and the fix).
            `ValueError`: for a module-sharded adapter, naming `gradiend_peft.load_gradiend_model`, which loads it.
            `FileNotFoundError`: if there is no such folder or Hub repository.
        """
        from .persistence import config_from_pretrained

        return config_from_pretrained(cls, pretrained_model_name_or_path, subfolder, **kwargs)

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Writes ``adapter_config.json`` atomically, with the digest of the weights in ``save_directory`` (what
        ``PeftModel.save_pretrained`` calls after writing them; see `gradiend_peft.tuner.persistence.save_config`).

        Raises:
            `ValueError`: if the weights beside it were pickled (``safe_serialization=False``); nothing is written.
        """
        from .persistence import save_config

        save_config(self, save_directory, kwargs.pop("auto_mapping_dict", None))

    def module_entries(self) -> dict[str, int]:
        """Target module -> its input entries ``n_m`` (``kept_entries`` when pruned, else the weight's size), from
        ``target_shapes``: the whole adapter's, whichever modules a model holds (module sharding)."""
        kept = self.kept_entries or {}
        return {m: int(kept[m]) if m in kept else math.prod(shape) for m, shape in (self.target_shapes or {}).items()}

    @classmethod
    def check_kwargs(cls, **kwargs):
        """peft's hook before a saved config is built: drops ``training_summary``, which adapters saved by
        gradiend_peft 0.1 kept in the config (the trainer's run log now stays with the trainer)."""
        kwargs.pop("training_summary", None)
        return super().check_kwargs(**kwargs)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(PEFT_TYPE_NAME)
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        self._validate()

    def check_patterns(self) -> None:
        """Refuses module-name patterns (``target_modules``, ``exclude_modules``, ``layers_pattern``) whose matching
        could backtrack for minutes (`check_pattern_cost`). A config with ``target_shapes`` (a saved adapter's)
        matches no pattern, so nothing is checked then.

        Raises:
            `ValueError`: naming the pattern, the problem and the fix.
        """
        if self.target_shapes is not None:
            return
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "all-linear":
                check_pattern_cost(name, value)
        layers = self.layers_pattern
        for pattern in [layers] if isinstance(layers, str) else (layers or []):
            check_pattern_cost("layers_pattern", str(pattern))

    def _validate(self) -> None:
        if (isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int)
                or not 0 < self.latent_dim <= MAX_LATENT_DIM):
            raise ValueError(
                f"latent_dim must be an integer in [1, {MAX_LATENT_DIM}], got {self.latent_dim!r}: the adapter holds "
                "2 x latent_dim numbers per target weight. Use e.g. latent_dim=1 (the papers')."
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {self.activation!r}; choose one of {list(ACTIVATIONS)}.")
        for name in ("source", "target"):
            if getattr(self, name) not in GRADIENT_KINDS:
                raise ValueError(
                    f"Unknown {name} {getattr(self, name)!r}; choose one of {list(GRADIENT_KINDS)}."
                )
        if self.objective not in ("auto", *OBJECTIVES):
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {['auto', *OBJECTIVES]}.")
        if self.target_parameters:
            raise ValueError("GRADIEND targets modules, not bare parameters: leave target_parameters=None.")
        check_modules_to_save(self.modules_to_save)
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, list):
                if not value and name == "target_modules":
                    raise ValueError("target_modules=[] targets nothing. Pass module names (e.g. ['q_proj', 'v_proj']), "
                                     "a regular expression, 'all-linear', or None for the architecture's default.")
                if not all(isinstance(t, str) and t for t in value):
                    raise ValueError(f"{name} must be non-empty strings, got {value!r}.")
            elif isinstance(value, str) and value != "all-linear":
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(
                        f"{name}={value!r} is not a valid regular expression ({err}). A string is matched with "
                        "re.fullmatch against full module names; pass a list of names for suffix matching instead."
                    ) from err
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a list of module names, a regular expression or None, got {value!r}.")
        self.check_patterns()
        if self.feature_classes is not None:
            classes = list(self.feature_classes)
            if len(classes) != 2 or len(set(classes)) != 2 or not all(isinstance(c, str) and c for c in classes):
                raise ValueError(
                    f"feature_classes must be two different class names, e.g. ['M', 'F'], got {self.feature_classes!r}."
                )
            self.feature_classes = classes
            if self.class_signs is None:
                self.class_signs = {classes[0]: 1.0, classes[1]: -1.0}
        if self.class_signs is not None:
            if self.feature_classes is None or set(self.class_signs) != set(self.feature_classes):
                raise ValueError(
                    f"class_signs {self.class_signs!r} must name exactly the feature_classes {self.feature_classes!r}."
                )
            signs = {k: float(v) for k, v in self.class_signs.items()}
            if sorted(signs.values()) != [-1.0, 1.0]:
                raise ValueError(f"class_signs must give one class +1 and the other -1, got {self.class_signs!r}.")
            self.class_signs = signs
        for name in ("feature_factor", "lr"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"{name} must be a finite number (int or float), got {value!r}, e.g. {name}=1.0.")
            setattr(self, name, float(value))
        seed = self.init_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64):
            raise ValueError(  # the range torch.Generator.manual_seed takes
                f"init_seed must be an integer (or None), got {seed!r} ({type(seed).__name__}); e.g. init_seed=7, a "
                "number, not a string."
            )
        if self.weights_digest is not None and not isinstance(self.weights_digest, str):
            raise ValueError(f"weights_digest is set by saving and must be a string, got {self.weights_digest!r}.")
        if self.kept_entries is not None:
            bad = {k: v for k, v in self.kept_entries.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"kept_entries must map module names to non-negative integers, got {bad!r}.")


FUNCTION_FIELDS = ("target_shapes", "kept_entries", "latent_dim", "activation", "decoder_bias", "source", "target",
                   "objective", "normalize_gradients", "feature_classes")
"""The config fields that change what an adapter computes from a gradient, or what its training optimises (a resumed
training refuses a checkpoint that differs in any of them). The others are metadata: merge defaults (``feature_factor``,
``lr``), ``init_seed``, ``class_signs`` (sign normalisation flips them during training), the base model's name, and
the target patterns (``target_shapes`` records what they matched)."""


MAX_VARIABLE_REPEATS = 3
"""The most variable-length repeats (``*``, ``+``, ``{m,}``, ``{m,n}``) a module-name regex may hold: peft matches it
against every module name, and the worst case of ``k`` repeats grows like ``len(name) ** k``."""


def check_pattern_cost(name: str, pattern: str) -> None:
    """Refuses a module-name regex whose matching can take exponential or high-polynomial time.

    peft matches ``target_modules`` and ``exclude_modules`` with ``re.fullmatch`` against every module name of the
    model (``layers_pattern`` is placed inside such a regex), and Python's backtracking matcher can take longer than
    any user would wait: ``"(.*)*X"`` kept a load busy past 90 s. Refused are a repeat inside a repeat (nested
    quantifiers such as ``(.*)*`` or ``(\\w+\\.)*``), a repeated alternation of multi-character branches
    (``(a|aa)*``), and more than `MAX_VARIABLE_REPEATS` variable-length repeats in all.

    Raises:
        `ValueError`: naming the argument, what makes the pattern slow and the fix.
    """
    try:
        from re import _parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse

    repeats = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}

    def variable(args) -> bool:
        low, high, _ = args
        return high != low and (high == sre_parse.MAXREPEAT or high > 1)

    def children(op, args) -> list:
        if op in repeats:
            return [args[2]]
        if op == sre_parse.SUBPATTERN:
            return [args[3]]
        if op == sre_parse.BRANCH:
            return list(args[1])
        if op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            return [args[1]]
        if op == sre_parse.GROUPREF_EXISTS:
            return [branch for branch in args[1:] if branch is not None]
        if op == getattr(sre_parse, "ATOMIC_GROUP", None):
            return [args]
        return []

    def walk(parsed, inside_repeat: bool) -> int:
        count = 0
        for op, args in parsed:
            repeated = op in repeats and args[1] > 1  # its body may be matched more than once
            if inside_repeat and op in repeats and variable(args):
                problem = "a repeat inside a repeat (nested quantifiers)"
            elif inside_repeat and op == sre_parse.BRANCH:
                problem = "a repeated alternation"
            else:
                problem = None
            if problem:
                raise ValueError(
                    f"{name}={pattern!r} holds {problem}: matching it against the model's module names can take "
                    "exponential time (catastrophic backtracking). Write it without nesting, e.g. '.*' for any "
                    "dotted prefix, or pass a list of module names (suffix match, no regular expression)."
                )
            count += op in repeats and variable(args)
            for child in children(op, args):
                count += walk(child, inside_repeat or repeated)
        return count

    try:
        parsed = sre_parse.parse(pattern)
    except re.error as err:
        raise ValueError(f"{name}={pattern!r} is not a valid regular expression ({err}).") from err
    count = walk(parsed, False)
    if count > MAX_VARIABLE_REPEATS:
        raise ValueError(
            f"{name}={pattern!r} holds {count} variable-length repeats (*, +, {{m,n}}); more than "
            f"{MAX_VARIABLE_REPEATS} can make matching it against every module name take very long. Simplify it, or "
            "pass a list of module names (suffix match, no regular expression)."
        )


def check_modules_to_save(modules_to_save) -> None:
    """Refuses peft's ``modules_to_save`` for GRADIEND.

    peft would put a trainable copy of each named module beside the adapter and save it with it. GRADIEND's objective
    is the reconstruction of the target weights' gradients by the encoder-decoder: it differentiates only the
    adapter's own tensors, so such a copy would stay as it was loaded, double the module's memory and fill the adapter
    file for nothing, and a merge would not touch it.

    Raises:
        `ValueError`: for any non-empty ``modules_to_save``, naming what to do instead.
    """
    if modules_to_save:
        raise ValueError(
            f"GRADIEND does not support modules_to_save={modules_to_save!r}: its objective trains only the adapter's "
            "encoder-decoder, so these modules would be saved but never trained. To edit a module's weights with "
            "GRADIEND, add it to target_modules; to train a task head, fine-tune it (e.g. with LoRA) and merge or save "
            "it with the base model first, then attach GRADIEND to that model. Leave modules_to_save=None."
        )


def check_target_shapes(config: GradiendConfig, shapes: dict[str, list[int]]) -> None:
    """Refuses an adapter whose recorded ``target_shapes`` differ from ``shapes``, this model's target weights
    (checked in module order).

    Raises:
        `ValueError`: naming the modules or the module and both shapes.
    """
    expected = {name: list(shape) for name, shape in (config.target_shapes or {}).items()}
    origin = adapter_origin(config)
    missing = [name for name in expected if name not in shapes]
    extra = [name for name in shapes if name not in expected]
    if missing or extra:
        raise ValueError(
            f"This GRADIEND adapter ({origin}) does not fit this model: modules missing here: {missing[:5]}, "
            f"modules matched here but absent from the adapter: {extra[:5]}. Load it onto the base model it was "
            "trained on."
        )
    for name, shape in shapes.items():
        if expected[name] != shape:
            raise ValueError(
                f"Module {name!r} has weight shape {tuple(shape)} in this model but {tuple(expected[name])} in the "
                f"GRADIEND adapter ({origin}). Load it onto the base model it was trained on."
            )


def adapter_origin(config: GradiendConfig) -> str:
    """Where an adapter comes from, for messages refusing it on another model."""
    return f"made for {config.base_model_name_or_path!r}" if config.base_model_name_or_path else "made for another model"
