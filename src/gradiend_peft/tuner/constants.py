"""Architecture-specific defaults for GRADIEND, in one table (like peft/utils/constants.py), and the package's
constants, each defined here once.

The default input space is every weight matrix of the transformer blocks: attention and MLP projections of
every layer, the LM head and the task heads excluded. Embeddings join with ``include_embeddings=True``.
Each entry is a regular expression that ``re.fullmatch``-es a module name.

`infer_objective` is the one rule for whether a model is a masked or a causal language model (used by
``GradiendConfig(objective="auto")``, by model loading and by the benchmark scorers).
"""

from __future__ import annotations

from typing import Any, Optional

PEFT_TYPE_NAME = "GRADIEND"
"""The member `gradiend_peft.registration` adds to peft's ``PeftType`` enum."""
PEFT_METHOD_NAME = "gradiend"
ADAPTER_PREFIX = "gradiend_"
"""The prefix of every adapter tensor's name (peft finds an adapter's tensors by it)."""

_DECODER_BLOCKS = r".*layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING: dict[str, str] = {
    "bert": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
    "roberta": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
    "xlm-roberta": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
    "electra": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
    "distilbert": r".*transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.(lin1|lin2))",
    "gpt2": r".*h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))",
    "llama": _DECODER_BLOCKS,
    "mistral": _DECODER_BLOCKS,
    "qwen2": _DECODER_BLOCKS,
    "qwen3": _DECODER_BLOCKS,
    "gemma": _DECODER_BLOCKS,
    "gemma2": _DECODER_BLOCKS,
    "gemma3": _DECODER_BLOCKS,
    "gemma3_text": _DECODER_BLOCKS,
}

ACTIVATIONS = ("tanh", "relu", "leakyrelu", "gelu", "silu", "elu", "sigmoid", "hardtanh", "id")
GRADIENT_KINDS = ("factual", "alternative", "diff")
OBJECTIVES = ("masked_lm", "causal_lm")
"""The language-modelling objectives (``GradiendConfig(objective=...)`` also takes ``"auto"``: `infer_objective`)."""
IGNORE_INDEX = -100
"""The label id of a position that no loss counts (``torch.nn.functional.cross_entropy``'s default)."""
MAX_LATENT_DIM = 4096
"""The largest latent size a config accepts (and the loader trusts): the adapter holds 2 x latent_dim numbers per
target weight, so larger values only run out of memory."""

# ------------------------------------------------------------------------------------- the files of an adapter
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
INDEX_NAME = "adapter_model.safetensors.index.json"
"""A module-sharded adapter: the index (tensor name -> shard file) beside ``adapter_model-00001-of-0000N.safetensors``."""
CARD_NAME = "README.md"
TRAINING_SUMMARY_NAME = "gradiend_training_summary.json"
PICKLED_WEIGHTS_NAME = "adapter_model.bin"
"""What peft's ``save_pretrained(safe_serialization=False)`` writes; gradiend_peft never reads it."""
SHARD_FILE = r"adapter_model-(\d{5})-of-(\d{5})\.safetensors"
WEIGHT_FILES = rf"adapter_model\.safetensors|{SHARD_FILE}|adapter_model\.safetensors\.index\.json"
"""The names of an adapter's weight files (single, shards, index): a save deletes those the new set replaces."""
ADAPTER_FILES = rf"adapter_config\.json|{WEIGHT_FILES}|README\.md|gradiend_training_summary\.json"
"""Every name gradiend_peft writes into an adapter folder: a commit journal may name these and nothing else."""

def infer_objective(model_or_config: Any, default: Optional[str] = "causal_lm") -> Optional[str]:
    """``"masked_lm"`` or ``"causal_lm"`` for a model (a `peft.PeftModel` is looked through), its config, or a config
    as a dict; the one rule of the package.

    1. The config's ``architectures`` (else the model's class names): a name containing ``MaskedLM`` is a masked LM, one
       ending in ``ForCausalLM`` or ``LMHeadModel`` a causal LM.
    2. Else the ``model_type``: transformers' masked-LM and causal-LM model tables; a type in both (BERT-like encoders
       that also have a decoder class) is causal only with ``is_decoder=True``.
    3. Else ``default`` (``None``: the caller decides, e.g. refuses).
    """
    model = model_or_config
    names: list[str] = []
    if hasattr(model, "get_base_model"):  # a PeftModel
        names.append(type(model).__name__)
        model = model.get_base_model()
    if isinstance(model, dict):
        config: Any = model
    else:
        config = getattr(model, "config", model)
        if config is not model:
            names.append(type(model).__name__)

    def get(key: str) -> Any:
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    for name in list(get("architectures") or []) + names:
        if "MaskedLM" in name:
            return "masked_lm"
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = get("model_type")
    causal, masked = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if masked and causal:
        return "causal_lm" if get("is_decoder") else "masked_lm"
    if masked or causal:
        return "masked_lm" if masked else "causal_lm"
    return default
