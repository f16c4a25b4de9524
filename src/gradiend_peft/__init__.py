"""gradiend_peft: GRADIEND as a PEFT method.

Importing this package registers the ``GRADIEND`` method with peft (its only side effect), so that
``get_peft_model(model, GradiendConfig(...))``, ``PeftConfig.from_pretrained`` and ``PeftModel.from_pretrained``
work for GRADIEND adapters. Import it before loading an adapter with peft.

The names below are the whole top-level API; everything else lives in its submodule (`gradiend_peft.data`,
`gradiend_peft.objective`, `gradiend_peft.training`, `gradiend_peft.evaluation`, `gradiend_peft.plotting`,
`gradiend_peft.pair_adapters`, `gradiend_peft.embedded_models`, `gradiend_peft.planning`, `gradiend_peft.cli`), and
the study of social bias with the method (benchmarks, debiasing, baselines) lives in `gradiend_peft.bias`. Only the
adapter (`GradiendConfig`, `GradiendModel`) is imported eagerly; the rest loads on first use, so
``import gradiend_peft`` pulls in no training, evaluation or CLI code.
"""

from typing import TYPE_CHECKING

from .registration import register as _register

_register()

from .tuner import GradiendConfig, GradiendModel  # noqa: E402

__version__ = "0.2.0"

_LAZY_NAMES = {
    "GradiendTrainer": "training",
    "GradiendTrainingArguments": "training",
    "train_with_restarts": "training",
    "evaluate_encoder": "evaluation",
    "search_rewrite": "evaluation",
        "load_gradiend_model": "loading",
    "UntrustedAdapterError": "loading",
    "save_adapter": "saving",
    "push_adapter_to_hub": "saving",
    "prune_adapter": "pruning",
    "pre_prune_adapter": "pruning",
}
_SUBMODULES = ("atomic", "bias", "cli", "data", "editing", "embedded_models", "evaluation", "loading", "objective",
               "pair_adapters", "planning", "plotting", "pruning", "saving", "training", "tuner")

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .evaluation import evaluate_encoder, search_rewrite
    from .loading import UntrustedAdapterError, load_gradiend_model
    from .pruning import pre_prune_adapter, prune_adapter
    from .saving import push_adapter_to_hub, save_adapter
    from .training import GradiendTrainer, GradiendTrainingArguments, train_with_restarts


def __getattr__(name: str):
    import importlib

    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gradiend_peft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))


__all__ = [
    "GradiendConfig",
    "GradiendModel",
    "GradiendTrainer",
    "GradiendTrainingArguments",
    "UntrustedAdapterError",
    "evaluate_encoder",
    "load_gradiend_model",
    "pre_prune_adapter",
    "prune_adapter",
    "push_adapter_to_hub",
    "save_adapter",
    "search_rewrite",
    "train_with_restarts",
]
