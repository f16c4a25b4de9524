"""Loading GRADIEND adapters from a folder or the Hub: `load_gradiend_model` onto a base model, and
`load_gradiend_adapter` into a `PeftModel` that already holds GRADIEND adapters (under another name).

peft's own readers (``PeftModel.from_pretrained``, ``load_adapter``) load a GRADIEND adapter safely once
``import gradiend_peft`` has registered the method: GRADIEND's hooks run every check of
`gradiend_peft.tuner.untrusted` (see `gradiend_peft.tuner.persistence`). `load_gradiend_model` runs the same checks
and adds what peft's reader cannot give:

- no import order: it registers GRADIEND with peft first;
- exactly one save's files: it holds the folder's shared lock while it reads (a library save commits under the
  exclusive lock), reads every file once, checks the tensors it read and loads those. peft reads the config and the
  weights at different moments and takes no lock: a save in between is refused by the weights digest, so peft's
  reader can fail where this one does not;
- the base model stays untouched when the files are refused (peft attaches the adapter before it reads the weights);
- module-sharded adapters: one safetensors file per shard, ``adapter_model-00001-of-00002.safetensors``, ..., plus
  ``adapter_model.safetensors.index.json`` mapping every tensor name to its file (transformers' layout for sharded
  checkpoints) and one ``adapter_config.json`` for the whole adapter, as a module-sharded training run saves it
  (`gradiend_peft.saving.save_sharded_adapter`). They load as ONE adapter: the index is checked (file names of
  exactly that form, no tensor twice, every shard present), every file's header and values as for a single file,
  each file must hold exactly the tensors the index gives it, and their union exactly the config's. peft's
  single-file reader refuses them, naming this function.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft import PeftModel
from torch import nn

from .atomic import UntrustedAdapterError
from .registration import register
from .tuner.constants import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from .tuner.persistence import AdapterFolder, locate, read_adapter
from .tuner.untrusted import (
    parse_index,
    shard_file_name,
    validate_adapter_config,
)

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "UntrustedAdapterError",
    "load_gradiend_adapter",
    "load_gradiend_model",
    "parse_index",
    "shard_file_name",
    "validate_adapter_config",
]


def _config(raw: dict[str, Any], is_trainable: bool) -> Any:
    """The `GradiendConfig` of a checked ``adapter_config.json`` payload, for loading."""
    from .tuner.config import GradiendConfig

    config = GradiendConfig.from_peft_type(**GradiendConfig.check_kwargs(**raw))
    config.inference_mode = not is_trainable
    config.weights_digest = None  # read_adapter checked it against exactly these tensors
    return config


def _load_tensors(model: PeftModel, tensors: dict[str, torch.Tensor], adapter_name: str, is_trainable: bool,
                  source: AdapterFolder) -> None:
    """What peft's readers do with the weights once the adapter ``adapter_name`` is attached, given the tensors."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if "gradiend_" in key and key.split(".")[-1] == adapter_name]
    if missing:  # pragma: no cover - read_adapter checked the names against the config
        raise UntrustedAdapterError(f"The adapter in {source.path!r} left tensors of the model unloaded: {missing[:3]}.")
    model.base_model._cast_adapter_dtype(adapter_name)
    if not is_trainable:
        model.eval()


def _locate(model_id: str, subfolder: Optional[str], revision: Optional[str], token: Optional[str],
            cache_dir: Optional[str]) -> AdapterFolder:
    hub = {key: value for key, value in (("revision", revision), ("token", token), ("cache_dir", cache_dir))
           if value is not None}
    return locate(model_id, subfolder, **hub)


def _attach(base_model: nn.Module, raw: dict[str, Any], tensors: dict[str, torch.Tensor], adapter_name: str,
            is_trainable: bool, source: AdapterFolder) -> PeftModel:
    """What ``PeftModel.from_pretrained`` does with a config and its weights, given the tensors already read."""
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    config = _config(raw, is_trainable)
    model = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)(base_model, config, adapter_name)
    _load_tensors(model, tensors, adapter_name, is_trainable, source)
    return model


def load_gradiend_model(
    base_model: nn.Module,
    model_id: str,
    adapter_name: str = "default",
    is_trainable: bool = False,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    subfolder: Optional[str] = None,
) -> PeftModel:
    """Loads a GRADIEND adapter onto ``base_model`` from a local folder or a Hub repository.

    Reads JSON and safetensors only, each file once, under the folder's shared lock, and checks everything before
    the base model is touched (see the module docstring for what it adds to ``PeftModel.from_pretrained``).

    Args:
        base_model (`nn.Module`): The transformers model the adapter was trained on.
        model_id (`str`): A folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or a sharded
            adapter: ``adapter_model.safetensors.index.json`` and the shard files it names), or a Hub repo id.
        adapter_name (`str`): The name to load the adapter under.
        is_trainable (`bool`): Load it trainable (to continue training) rather than for inference.
        revision (`str`, *optional*, defaults to ``None``): The branch, tag or commit to download (Hub repositories
            only; default: the main branch).
        token (`str`, *optional*, defaults to ``None``): A Hub token for the download (default: the stored login).
        cache_dir (`str`, *optional*, defaults to ``None``): Where the Hub download is cached (default: the Hub
            cache).
        subfolder (`str`, *optional*, defaults to ``None``): The folder inside ``model_id`` (the local folder or the
            Hub repository) that holds the adapter files.

    Returns:
        `PeftModel`: ``base_model`` with the adapter attached.

    Raises:
        `UntrustedAdapterError`: If the files are malformed, truncated, hold non-finite values, are inconsistent
            (with each other: the weights digest; or with the config), or the folder holds an interrupted save or a
            link (nothing is loaded then, and ``base_model`` is unchanged).
        `FileNotFoundError`: If ``model_id`` is neither a local folder nor a reachable Hub repository.
        `ValueError`: If the adapter does not fit ``base_model`` (the message names the module and both shapes).
    """
    register()
    source = _locate(model_id, subfolder, revision, token, cache_dir)
    raw, tensors = read_adapter(source, base_model)
    return _attach(base_model, raw, tensors, adapter_name, is_trainable, source)


def load_gradiend_adapter(
    model: PeftModel,
    model_id: str,
    adapter_name: str,
    is_trainable: bool = False,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    subfolder: Optional[str] = None,
) -> PeftModel:
    """Loads a GRADIEND adapter into ``model``, which already holds GRADIEND adapters, under ``adapter_name``: what
    peft's ``model.load_adapter(model_id, adapter_name)`` does, with the reading and checks of `load_gradiend_model`.

    The files are read and checked before ``model`` is touched: on a refusal it holds no new adapter. The new adapter
    is not made active (``model.set_adapter(adapter_name)`` does that).

    Args:
        model (`PeftModel`): A model with GRADIEND adapters (from `load_gradiend_model` or ``get_peft_model``).
        model_id (`str`): A folder or a Hub repo id, as for `load_gradiend_model`.
        adapter_name (`str`): The name to load the adapter under; ``model`` must not hold one of that name.
        is_trainable (`bool`): Load it trainable rather than for inference.
        revision (`str`, *optional*, defaults to ``None``): As for `load_gradiend_model`.
        token (`str`, *optional*, defaults to ``None``): As for `load_gradiend_model`.
        cache_dir (`str`, *optional*, defaults to ``None``): As for `load_gradiend_model`.
        subfolder (`str`, *optional*, defaults to ``None``): As for `load_gradiend_model`.

    Returns:
        `PeftModel`: ``model``, with the adapter added.

    Raises:
        `UntrustedAdapterError`: As for `load_gradiend_model` (nothing is added to ``model`` then).
        `FileNotFoundError`: If ``model_id`` is neither a local folder nor a reachable Hub repository.
        `ValueError`: If ``model`` holds an adapter named ``adapter_name``, or the adapter does not fit its base model.
    """
    register()
    if adapter_name in model.peft_config:
        raise ValueError(f"The model already holds an adapter named {adapter_name!r}: load the adapter under another "
                         "name, or delete that one first (model.delete_adapter).")
    source = _locate(model_id, subfolder, revision, token, cache_dir)
    raw, tensors = read_adapter(source, model.get_base_model())
    model.add_adapter(adapter_name, _config(raw, is_trainable))
    try:
        if is_trainable:
            model.set_requires_grad(adapter_name)
        _load_tensors(model, tensors, adapter_name, is_trainable, source)
    except BaseException:
        model.delete_adapter(adapter_name)
        raise
    return model
