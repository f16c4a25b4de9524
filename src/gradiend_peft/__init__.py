"""gradiend_peft: GRADIEND as a PEFT method.

Importing this package registers the ``GRADIEND`` method with peft (its only side effect), so that
``get_peft_model(model, GradiendConfig(...))``, ``PeftConfig.from_pretrained`` and
``PeftModel.from_pretrained`` work for GRADIEND adapters. Import it before loading an adapter with peft.
"""

from .registration import register as _register

_register()

from . import data, evaluation, plotting  # noqa: E402
from .atomic import save_adapter  # noqa: E402
from .data import (  # noqa: E402
    MASK_PLACEHOLDER,
    CausalLMCollator,
    Feature,
    MaskedLMCollator,
    MiningReport,
    check_single_token,
    collator_for,
    load_corpus,
    mine_neutral,
    mine_pairs,
)
from .evaluation import (  # noqa: E402
    Balance,
    EncoderReport,
    Favour,
    RewriteResult,
    Strengthen,
    Weaken,
    evaluate_encoder,
    search_rewrite,
)
from .gradients import NonFiniteGradientError, batch_gradients, per_example_dots, per_example_encoder_dots  # noqa: E402
from .hub import push_adapter_to_hub, write_model_card  # noqa: E402
from .loading import UntrustedAdapterError, load_gradiend_model  # noqa: E402
from .pruning import pre_prune_adapter, prune_adapter  # noqa: E402
from .tuner import GradiendConfig, GradiendModel  # noqa: E402

__version__ = "0.1.0"

_LAZY = {"GradiendTrainer": "training", "GradiendTrainingArguments": "training", "training": None, "cli": None,
         "pretrained": None, "workflow": None}


def __getattr__(name: str):
    # the trainer imports transformers' Trainer (and accelerate): load it on first use, not at `import gradiend_peft`
    if name not in _LAZY:
        raise AttributeError(f"module 'gradiend_peft' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = [
    "Balance",
    "EncoderReport",
    "Favour",
    "RewriteResult",
    "Strengthen",
    "Weaken",
    "evaluate_encoder",
    "search_rewrite",
    "MASK_PLACEHOLDER",
    "CausalLMCollator",
    "Feature",
    "GradiendConfig",
    "GradiendModel",
    "GradiendTrainer",
    "GradiendTrainingArguments",
    "MaskedLMCollator",
    "MiningReport",
    "NonFiniteGradientError",
    "UntrustedAdapterError",
    "batch_gradients",
    "check_single_token",
    "collator_for",
    "load_corpus",
    "load_gradiend_model",
    "mine_neutral",
    "mine_pairs",
    "per_example_dots",
    "per_example_encoder_dots",
    "pre_prune_adapter",
    "prune_adapter",
    "push_adapter_to_hub",
    "save_adapter",
    "write_model_card",
]
