"""Architecture-specific defaults for GRADIEND, in one table (like peft/utils/constants.py).

The default input space is every weight matrix of the transformer blocks: attention and MLP projections of
every layer, the LM head and the task heads excluded. Embeddings join with ``include_embeddings=True``.
Each entry is a regular expression that ``re.fullmatch``-es a module name.
"""

from __future__ import annotations

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

MASKED_LM_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta-v2"})

ACTIVATIONS = ("tanh", "relu", "leakyrelu", "gelu", "silu", "elu", "sigmoid", "hardtanh", "id")
GRADIENT_KINDS = ("factual", "alternative", "diff")
OBJECTIVES = ("auto", "masked_lm", "causal_lm")
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
