"""Loading GRADIEND adapters safely, from a folder or the Hub.

`load_gradiend_model` is the entry point for any GRADIEND adapter: it registers the method with peft (so the bare
``KeyError: 'GRADIEND'`` of a peft that never saw ``import gradiend_peft`` cannot happen), reads JSON and
safetensors only (never pickles), checks the untrusted ``adapter_config.json`` (types, sizes, names) and the
tensors' shapes against the config and the base model before any tensor is loaded, and then hands over to
``PeftModel.from_pretrained``.

A *sharded* adapter (written by a module-sharded training run, see `gradiend_peft.hub.save_sharded_adapter`) is one
safetensors file per shard, ``adapter_model-00001-of-00002.safetensors``, ..., plus
``adapter_model.safetensors.index.json`` mapping every tensor name to its file (transformers' layout for sharded
checkpoints), and one ``adapter_config.json`` for the whole adapter. It loads as ONE adapter: the index is checked
(file names of exactly that form, no tensor twice, every shard present), every file's header and values as for a
single file, each file must hold exactly the tensors the index gives it, and their union exactly the config's.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Optional

import torch
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from torch import nn

from .atomic import recover_directory
from .registration import register
from .tuner.constants import MAX_LATENT_DIM, PEFT_TYPE_NAME

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
INDEX_NAME = "adapter_model.safetensors.index.json"
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_SHARDS = 99999
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_SHARD_FILE = re.compile(r"^adapter_model-(\d{5})-of-(\d{5})\.safetensors$")
ADAPTER_WEIGHT_FILES = re.compile(r"adapter_model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")
"""The names of adapter weight files (single, shards, index): a save replaces those it does not write again."""


def shard_file_name(index: int, count: int) -> str:
    """``adapter_model-<index>-of-<count>.safetensors`` (1-based ``index``, five digits each, as transformers)."""
    return f"adapter_model-{index:05d}-of-{count:05d}.safetensors"


class UntrustedAdapterError(ValueError):
    """An adapter folder whose files are malformed, oversized or inconsistent with each other or the model."""


def _resolve_files(model_id: str, revision: Optional[str], token: Optional[str], cache_dir: Optional[str],
                   subfolder: Optional[str]) -> str:
    if os.path.isdir(model_id):
        folder = os.path.join(model_id, subfolder) if subfolder else model_id
        recover_directory(folder)  # finish a save that a crash interrupted (see gradiend_peft.atomic)
        single = os.path.isfile(os.path.join(folder, WEIGHTS_NAME))
        sharded = os.path.isfile(os.path.join(folder, INDEX_NAME))
        _expect(not (single and sharded), f"{folder!r} holds both {WEIGHTS_NAME} and a sharded adapter ({INDEX_NAME}): "
                "it is not clear which one is the adapter. Save it again into an empty folder.")
        if not (single or sharded):
            raise UntrustedAdapterError(
                f"{folder!r} has no {WEIGHTS_NAME} (nor a sharded adapter's {INDEX_NAME}). gradiend_peft loads "
                "safetensors only (no pickled .bin files); re-save the adapter with save_pretrained(safe_serialization=True)."
            )
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    def download(name: str) -> str:
        return hf_hub_download(model_id, name, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir)

    try:
        config_path = download(CONFIG_NAME)
        try:
            download(WEIGHTS_NAME)
        except EntryNotFoundError:  # a sharded adapter: the index, then the files it names (checked first)
            index = _parse_index(download(INDEX_NAME))
            for name in index:
                download(name)
    except (HFValidationError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise FileNotFoundError(
            f"No such adapter folder or Hub repository: {model_id!r}. It is not a local folder "
            f"({os.path.abspath(model_id)!r} does not exist), and the Hub lookup failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}). Check the path, or the repository id, "
            "your network and HF_TOKEN for a private repository."
        ) from err
    return os.path.dirname(config_path)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise UntrustedAdapterError(message)


def validate_adapter_config(raw: Any) -> dict[str, Any]:
    """Checks an untrusted ``adapter_config.json`` payload; returns it if it is a well-formed GRADIEND config.

    Raises:
        `UntrustedAdapterError`: naming the offending key and what was expected.
    """
    _expect(isinstance(raw, dict), "adapter_config.json must hold a JSON object.")
    _expect(raw.get("peft_type") == PEFT_TYPE_NAME, f"adapter_config.json is not a GRADIEND config (peft_type={raw.get('peft_type')!r}).")
    latent = raw.get("latent_dim", 1)
    _expect(isinstance(latent, int) and not isinstance(latent, bool) and 0 < latent <= MAX_LATENT_DIM,
            f"latent_dim must be an integer in [1, {MAX_LATENT_DIM}], got {latent!r}.")
    for key in ("activation", "source", "target", "objective"):
        _expect(key not in raw or isinstance(raw[key], str), f"{key} must be a string, got {type(raw.get(key)).__name__}.")
    targets = raw.get("target_modules")
    _expect(targets is None or isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets)),
            "target_modules must be a string or a list of strings.")
    shapes = raw.get("target_shapes")
    if shapes is not None:
        _expect(isinstance(shapes, dict), "target_shapes must map module names to shapes.")
        for name, shape in shapes.items():
            _expect(isinstance(name, str) and bool(_MODULE_NAME.match(name)),
                    f"target_shapes has an invalid module name {name!r} (dotted identifiers only).")
            _expect(isinstance(shape, list) and 0 < len(shape) <= 4
                    and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)
                    and math.prod(shape) < 2**40, f"target_shapes[{name!r}] is not a valid weight shape: {shape!r}.")
    kept = raw.get("kept_entries")
    if kept is not None:
        _expect(isinstance(kept, dict), "kept_entries must map module names to counts.")
        for name, count in kept.items():
            _expect(isinstance(name, str) and bool(_MODULE_NAME.match(name)), f"kept_entries has an invalid module name {name!r}.")
            _expect(isinstance(count, int) and not isinstance(count, bool) and count >= 0, f"kept_entries[{name!r}] must be a count.")
            if shapes is not None:
                _expect(name in shapes and count <= math.prod(shapes[name]),
                        f"kept_entries[{name!r}]={count} does not fit the module's recorded shape.")
    for key in ("base_model_name_or_path", "revision"):
        value = raw.get(key)
        _expect(value is None or (isinstance(value, str) and len(value) < 4096 and "\x00" not in value), f"{key} is malformed.")
    return raw


def _expected_tensor_shapes(raw: dict[str, Any]) -> Optional[dict[str, tuple[int, ...]]]:
    shapes = raw.get("target_shapes")
    if shapes is None:
        return None
    k = raw.get("latent_dim", 1)
    kept = raw.get("kept_entries") or {}
    expected: dict[str, tuple[int, ...]] = {"base_model.gradiend_encoder_bias": (k,), "base_model.gradiend_gradient_scale": ()}
    for name, shape in shapes.items():
        entries = (kept[name],) if name in kept else tuple(shape)
        prefix = f"base_model.model.{name}."
        expected[prefix + "gradiend_encoder"] = (k, *entries)
        expected[prefix + "gradiend_decoder"] = (k, *entries)
        if raw.get("decoder_bias", True):
            expected[prefix + "gradiend_decoder_bias"] = entries
        if name in kept:
            expected[prefix + "gradiend_kept_indices"] = (kept[name],)
    return expected


MAX_HEADER_BYTES = 100 * 1024 * 1024


def _read_header(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, checked for size and form before safetensors reads it."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
    _expect(len(prefix) == 8, f"{path} is truncated: {size} bytes, not even a safetensors header length.")
    header_bytes = int.from_bytes(prefix, "little")
    _expect(header_bytes <= MAX_HEADER_BYTES, f"{path} declares a {header_bytes}-byte header (over "
            f"{MAX_HEADER_BYTES}): not a GRADIEND adapter file.")
    _expect(8 + header_bytes <= size, f"{path} is truncated: its header needs {8 + header_bytes} bytes, the file has "
            f"{size}. Save the adapter again.")
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UntrustedAdapterError(f"{path} is not a readable safetensors file: {err}. Save the adapter again.") from err


def _module_of(key: str) -> Optional[tuple[str, str]]:
    """``("layers.0.mlp.up_proj", "gradiend_encoder")`` from ``base_model.model.layers.0.mlp.up_proj.gradiend_encoder``."""
    prefix = "base_model.model."
    if not key.startswith(prefix):
        return None
    module, _, tensor = key[len(prefix):].rpartition(".")
    return (module, tensor) if module else None


def _check_against_model(found: dict[str, tuple[int, ...]], base_model: nn.Module, path: str) -> None:
    """Without recorded ``target_shapes``: each unpruned layer tensor must match its base module's weight shape."""
    modules = dict(base_model.named_modules())
    for key, shape in found.items():
        parsed = _module_of(key)
        if parsed is None or parsed[1] not in ("gradiend_encoder", "gradiend_decoder", "gradiend_decoder_bias"):
            continue
        name, tensor = parsed
        module = modules.get(name)
        _expect(module is not None and getattr(module, "weight", None) is not None,
                f"{path} holds adapter tensors for module {name!r}, which this base model does not have. Load the "
                "adapter onto the base model it was trained on.")
        weight_shape = tuple(module.weight.shape)
        pruned = f"base_model.model.{name}.gradiend_kept_indices" in found
        own = shape if tensor == "gradiend_decoder_bias" else shape[1:]
        _expect(pruned or own == weight_shape,
                f"Tensor {key!r} in {path} has shape {shape}, which does not fit module {name!r} of this base model "
                f"(weight shape {weight_shape}). Load the adapter onto the base model it was trained on.")


def _check_tensor_names(found: dict[str, tuple[int, ...]], raw_config: dict[str, Any], base_model: Optional[nn.Module],
                        path: str) -> None:
    """The tensors ``found`` (name -> shape) against the config (names, shapes; without ``target_shapes`` in the
    config, against ``base_model``'s modules)."""
    expected = _expected_tensor_shapes(raw_config)
    if expected is not None:
        unexpected = sorted(set(found) - set(expected))
        missing = sorted(set(expected) - set(found))
        _expect(not unexpected, f"{path} holds tensors the config does not describe: {unexpected[:5]}.")
        _expect(not missing, f"{path} lacks tensors the config describes: {missing[:5]}.")
        for key, shape in found.items():
            _expect(shape == expected[key], f"Tensor {key!r} in {path} has shape {shape}, but the config implies {expected[key]}.")
    elif base_model is not None:
        _check_against_model(found, base_model, path)


def _check_values(path: str, raw_config: dict[str, Any]) -> None:
    """Every value of a safetensors file: adapter tensors finite, the gradient scale non-negative, kept indices inside
    their weight."""
    shapes = raw_config.get("target_shapes") or {}
    with safe_open(path, framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point():
                _expect(bool(torch.isfinite(tensor).all()), f"Tensor {key!r} in {path} holds NaN or infinite values; "
                        "merging it would corrupt the base weights. Retrain the adapter or load an intact copy.")
            if key == "base_model.gradiend_gradient_scale":
                _expect(bool((tensor >= 0).all()), f"Tensor {key!r} in {path} is negative: a gradient scale is >= 0.")
            if key.endswith(".gradiend_kept_indices"):
                parsed = _module_of(key)
                limit = math.prod(shapes[parsed[0]]) if parsed and parsed[0] in shapes else None
                _expect(not tensor.is_floating_point() and (tensor.numel() == 0 or int(tensor.min()) >= 0)
                        and (limit is None or tensor.numel() == 0 or int(tensor.max()) < limit),
                        f"Tensor {key!r} in {path} holds indices outside its weight.")


def validate_adapter_weights(path: str, raw_config: dict[str, Any], base_model: Optional[nn.Module] = None) -> None:
    """Checks a safetensors file against the config (names, shapes; without ``target_shapes`` in the config, against
    ``base_model``'s modules) and then every value: adapter tensors must be finite, the gradient scale non-negative,
    kept indices inside their weight.

    Raises:
        `UntrustedAdapterError`: naming the file, the tensor and the problem (nothing is loaded into a model).
    """
    _check_tensor_names(_read_header(path), raw_config, base_model, path)
    _check_values(path, raw_config)


MAX_INDEX_BYTES = 64 * 1024 * 1024


def _parse_index(path: str) -> dict[str, list[str]]:
    """The untrusted ``adapter_model.safetensors.index.json`` at ``path``: shard file -> its tensor names.

    Refuses: not a JSON object with a ``weight_map`` of tensor names to file names; a name twice; a file name not of
    the form ``adapter_model-<i>-of-<N>.safetensors`` (so no path: ``../x.safetensors`` is refused); files of
    different ``N``; a shard ``1..N`` that no tensor lives in.
    """
    _expect(os.path.getsize(path) <= MAX_INDEX_BYTES, f"{path} is larger than {MAX_INDEX_BYTES} bytes.")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        _expect(not twice, f"{path} lists tensor(s) {twice[:5]} more than once.")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle, object_pairs_hook=no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UntrustedAdapterError(f"{path} is not valid JSON: {err}") from err
    _expect(isinstance(raw, dict) and isinstance(raw.get("weight_map"), dict) and raw["weight_map"],
            f"{path} must hold a JSON object with a non-empty 'weight_map' of tensor names to shard files.")
    files: dict[str, list[str]] = {}
    counts = set()
    for name, file in raw["weight_map"].items():
        match = _SHARD_FILE.match(file) if isinstance(file, str) else None
        _expect(match is not None, f"{path} maps tensor {name!r} to {file!r}, which is not a shard file name of the form "
                "adapter_model-00001-of-00002.safetensors (a file in the adapter's own folder).")
        index, count = int(match.group(1)), int(match.group(2))
        _expect(1 <= index <= count <= MAX_SHARDS, f"{path} names an impossible shard file {file!r}.")
        counts.add(count)
        files.setdefault(file, []).append(name)
    _expect(len(counts) == 1, f"{path} mixes shard files of different counts: {sorted(counts)}.")
    count = counts.pop()
    absent = [shard_file_name(i, count) for i in range(1, count + 1) if shard_file_name(i, count) not in files]
    _expect(not absent, f"{path} names no tensor in shard file(s) {absent[:3]}: an incomplete sharded adapter.")
    return {file: files[file] for file in sorted(files)}


def validate_sharded_weights(folder: str, raw_config: dict[str, Any], base_model: Optional[nn.Module] = None,
                             values: bool = True) -> dict[str, list[str]]:
    """Checks a sharded adapter in ``folder`` (see the module docstring) as `validate_adapter_weights` checks one
    file; returns the index (shard file -> its tensor names). ``values=False`` checks names and shapes only (what
    the saver checks before it commits).

    Raises:
        `UntrustedAdapterError`: naming the file, the tensor and the problem (nothing is loaded into a model).
    """
    index = _parse_index(os.path.join(folder, INDEX_NAME))
    owner = {name: file for file, names in index.items() for name in names}
    found: dict[str, tuple[int, ...]] = {}
    for file, names in index.items():
        path = os.path.join(folder, file)
        _expect(os.path.isfile(path), f"The sharded adapter in {folder!r} lacks its shard file {file!r}.")
        header = _read_header(path)
        for name in sorted(set(header) - set(names)):
            where = f"the index puts it in {owner[name]!r}" if name in owner else "the index does not list it"
            _expect(False, f"{path} holds tensor {name!r}, but {where}: a tampered or mixed-up sharded adapter.")
        absent = sorted(set(names) - set(header))
        _expect(not absent, f"{path} lacks tensors that the index puts there: {absent[:5]}.")
        found.update(header)
    _check_tensor_names(found, raw_config, base_model, os.path.join(folder, INDEX_NAME))
    for file in index if values else ():
        _check_values(os.path.join(folder, file), raw_config)
    return index


def read_shard_tensors(folder: str, index: dict[str, list[str]], names: Optional[set[str]] = None) -> dict[str, torch.Tensor]:
    """The tensors of a validated sharded adapter (`validate_sharded_weights`), all or those in ``names``."""
    tensors = {}
    for file, keys in index.items():
        wanted = [key for key in keys if names is None or key in names]
        if wanted:
            with safe_open(os.path.join(folder, file), framework="pt") as handle:
                tensors.update({key: handle.get_tensor(key) for key in wanted})
    return tensors


def _load_sharded(base_model: nn.Module, folder: str, index: dict[str, list[str]], adapter_name: str,
                  is_trainable: bool) -> PeftModel:
    """What ``PeftModel.from_pretrained`` does for one file, with the tensors of every shard."""
    from peft.utils import set_peft_model_state_dict

    from .tuner.config import GradiendConfig

    config = GradiendConfig.from_pretrained(folder)
    config.inference_mode = not is_trainable
    model = PeftModel(base_model, config, adapter_name)
    result = set_peft_model_state_dict(model, read_shard_tensors(folder, index), adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if "gradiend_" in key and key.split(".")[-1] == adapter_name]
    _expect(not missing, f"The sharded adapter in {folder!r} left tensors of the model unloaded: {missing[:3]}.")
    if not is_trainable:
        model.eval()
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
        `UntrustedAdapterError`: If the files are malformed, truncated, hold non-finite values or are inconsistent
            (nothing is loaded then).
        `FileNotFoundError`: If ``model_id`` is neither a local folder nor a reachable Hub repository.
        `ValueError`: If the adapter does not fit ``base_model`` (the message names the module and both shapes).
    """
    register()
    folder = _resolve_files(model_id, revision, token, cache_dir, subfolder)
    config_path = os.path.join(folder, CONFIG_NAME)
    _expect(os.path.getsize(config_path) <= MAX_CONFIG_BYTES, f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes.")
    with open(config_path, encoding="utf-8") as handle:
        try:
            raw = json.load(handle)
        except json.JSONDecodeError as err:
            raise UntrustedAdapterError(f"{config_path} is not valid JSON: {err}") from err
    validate_adapter_config(raw)
    if not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        index = validate_sharded_weights(folder, raw, base_model)
        return _load_sharded(base_model, folder, index, adapter_name, is_trainable)
    validate_adapter_weights(os.path.join(folder, WEIGHTS_NAME), raw, base_model)
    return PeftModel.from_pretrained(base_model, folder, adapter_name=adapter_name, is_trainable=is_trainable)
