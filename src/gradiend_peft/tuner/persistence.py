"""Reading and writing a GRADIEND adapter's folder: what peft's verbs do through GRADIEND's hooks, and what
`gradiend_peft.load_gradiend_model` does, with one implementation of every check (`gradiend_peft.tuner.untrusted`).

- `config_from_pretrained` is ``GradiendConfig.from_pretrained``, which ``PeftModel.from_pretrained`` and
  ``load_adapter`` call before anything else of GRADIEND's: it finds the files (a local folder, or a Hub repository
  through ``huggingface_hub``), refuses a folder holding the journal of an interrupted save, links, pickled weights
  only, or a sharded adapter (peft reads one file), reads and checks the config, and checks the weights' header
  (names, shapes, dtypes) against it. (peft itself has read ``peft_type`` out of ``adapter_config.json`` just before:
  no GRADIEND code runs earlier.)
- `check_state_dict` is ``GradiendModel._remap_adapter_state_dict_for_load``, which peft calls with the tensors it
  read, before any is loaded into the model: names, shapes, dtypes, values, and the weights digest that the config
  recorded (a mix of two saves is refused).
- `save_config` is ``GradiendConfig.save_pretrained``, which ``PeftModel.save_pretrained`` calls after writing the
  weights: under the folder's lock it discards an interrupted commit (after checking its journal), refuses pickled
  weights, records the digest of the weights now in the folder, and writes the config atomically.
- `read_adapter` is what `gradiend_peft.load_gradiend_model` reads: every file once, under the folder's shared lock
  (so that no save commits in between), checked before a model is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..atomic import (
    UntrustedAdapterError,
    atomic_write_at,
    discard_interrupted_commits,
    folder_lock,
    open_regular_file,
    refuse_interrupted_commit,
)
from .constants import ADAPTER_FILES, CONFIG_NAME, INDEX_NAME, PICKLED_WEIGHTS_NAME, WEIGHT_FILES, WEIGHTS_NAME
from .untrusted import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    SafetensorsHeader,
    check_shard_headers,
    check_tensor_dtypes,
    check_tensor_names,
    check_tensor_values,
    index_limits,
    module_of,
    parse_config,
    parse_index,
    weights_digest,
)

_ADAPTER_FILES = re.compile(ADAPTER_FILES)
_WEIGHT_FILES = re.compile(WEIGHT_FILES)


@dataclass(frozen=True)
class AdapterFolder:
    """Where an adapter's files are: ``path``; ``local`` (a folder of the user's: no link is followed, and it is read
    under its shared lock) or the Hub cache (whose files are links into its blob store); ``sharded`` (an index and
    shard files, not one file), known for the Hub, found under the lock for a local folder (``None``)."""

    path: str
    local: bool
    sharded: Optional[bool] = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[tuple[int, bool]]:
        """``(the folder's descriptor, sharded)``; a local folder is checked (`_inspect_local`) and held under its
        shared lock meanwhile, so that no save of the library commits while it is read."""
        if self.local:
            with folder_lock(self.path, shared=True) as fd:
                yield fd, _inspect_local(self.path)
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd, bool(self.sharded)
        finally:
            os.close(fd)

    def read_bytes(self, fd: int, name: str, limit: int) -> bytes:
        """The file ``name`` (at most ``limit`` bytes, else refused)."""
        with os.fdopen(self.open(fd, name), "rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise UntrustedAdapterError(f"{os.path.join(self.path, name)} is larger than {limit} bytes.")
        return data

    def open(self, fd: int, name: str) -> int:
        try:
            return open_regular_file(name, fd, follow_links=not self.local)
        except UntrustedAdapterError as err:
            raise UntrustedAdapterError(f"{os.path.join(self.path, name)}: {err}") from None


def _inspect_local(folder: str) -> bool:
    """Whether the local adapter folder holds a sharded adapter. Call it under the folder's lock (a journal seen then
    is an interrupted save's). Refused, naming the fix, unless it holds a config and exactly one kind of safetensors
    weights, as regular files, and no interrupted save."""
    refuse_interrupted_commit(folder)

    def kind(name: str) -> Optional[str]:
        try:
            mode = os.lstat(os.path.join(folder, name)).st_mode
        except FileNotFoundError:
            return None
        return "file" if stat.S_ISREG(mode) else "other"

    for name in (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME):
        if kind(name) == "other":
            raise UntrustedAdapterError(f"{os.path.join(folder, name)} is not a regular file but a link, a folder or a "
                                        "special file: gradiend_peft reads only regular files inside the adapter folder "
                                        "(a link could point anywhere). Put the file itself there.")
    if kind(CONFIG_NAME) is None:
        raise FileNotFoundError(f"{folder!r} has no {CONFIG_NAME}: it is not an adapter folder (save one with "
                                "model.save_pretrained(folder) or gradiend_peft.save_adapter).")
    single, sharded = kind(WEIGHTS_NAME) is not None, kind(INDEX_NAME) is not None
    if single and sharded:
        raise UntrustedAdapterError(f"{folder!r} holds both {WEIGHTS_NAME} and a sharded adapter ({INDEX_NAME}): it is "
                                    "not clear which one is the adapter. Save it again into an empty folder.")
    if not (single or sharded):
        raise UntrustedAdapterError(
            f"{folder!r} has no {WEIGHTS_NAME} (nor a sharded adapter's {INDEX_NAME}). gradiend_peft loads "
            f"safetensors only (never a pickled {PICKLED_WEIGHTS_NAME}); re-save the adapter with "
            "save_pretrained(safe_serialization=True).")
    return sharded


def locate(model_id: str, subfolder: Optional[str] = None, shards: bool = True, **hub_kwargs: Any) -> AdapterFolder:
    """The adapter folder of ``model_id``: a local folder, or a Hub repository whose
    config and weights (and, with ``shards``, every shard file of a sharded adapter) are downloaded into the Hub cache.

    Raises:
        `FileNotFoundError`: if ``model_id`` is neither a local folder nor a reachable Hub repository.
        `UntrustedAdapterError`: for a malformed index of a Hub repository (a local folder is checked when it is
            opened, `AdapterFolder.opened`).
    """
    if os.path.isdir(model_id):
        return AdapterFolder(os.path.join(model_id, subfolder) if subfolder else model_id, True)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    def download(name: str) -> str:
        return hf_hub_download(model_id, name, subfolder=subfolder, **hub_kwargs)

    try:
        folder = os.path.dirname(download(CONFIG_NAME))
        try:
            download(WEIGHTS_NAME)
            return AdapterFolder(folder, False, False)
        except EntryNotFoundError:  # a sharded adapter: the index, then the files it names (checked first)
            index = download(INDEX_NAME)
        if shards:
            with open(index, "rb") as handle:
                for name in parse_index(handle.read(MAX_INDEX_BYTES + 1), index):
                    download(name)
        return AdapterFolder(folder, False, True)
    except (HFValidationError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise FileNotFoundError(
            f"No such adapter folder or Hub repository: {model_id!r}. It is not a local folder "
            f"({os.path.abspath(model_id)!r} does not exist), and the Hub lookup failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}). Check the path, or the repository id, "
            "your network and HF_TOKEN for a private repository."
        ) from err


def _sharded_refusal(model_id: str) -> ValueError:
    return ValueError(
        f"{model_id!r} holds a module-sharded GRADIEND adapter ({INDEX_NAME} and its shard files), and peft's "
        f"PeftModel.from_pretrained / load_adapter read a single {WEIGHTS_NAME}. Load it with "
        f"gradiend_peft.load_gradiend_model(base_model, {model_id!r}), which reads every shard as one adapter "
        "(model.save_pretrained(folder) then writes it as one file).")


# ------------------------------------------------------------------------------------------- peft's reader
def config_from_pretrained(cls: type, model_id: str, subfolder: Optional[str] = None, **kwargs: Any) -> Any:
    """``GradiendConfig.from_pretrained``: the config of the adapter ``model_id`` after the checks the module
    docstring lists; peft then reads the weights and `check_state_dict` checks them."""
    hub_kwargs, class_kwargs, _ = cls._split_kwargs(kwargs)
    source = locate(str(model_id), subfolder, shards=False, **hub_kwargs)
    with source.opened() as (fd, sharded):
        if sharded:
            raise _sharded_refusal(str(model_id))
        raw = parse_config(source.read_bytes(fd, CONFIG_NAME, MAX_CONFIG_BYTES), os.path.join(source.path, CONFIG_NAME))
        where = os.path.join(source.path, WEIGHTS_NAME)
        weights = source.open(fd, WEIGHTS_NAME)
        try:
            header = SafetensorsHeader(weights, where)
        finally:
            os.close(weights)
    check_tensor_names(header.shapes(), raw, where)
    check_tensor_dtypes(header.dtypes(), where)
    return cls.from_peft_type(**cls.check_kwargs(**{**class_kwargs, **raw}))


def check_state_dict(model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """The tensors peft is about to load into ``adapter_name`` (checkpoint names), against the config, or without
    ``target_shapes`` against the adapter the model holds; then the digest the config recorded, which is consumed
    (a later load into this adapter reads weights only, not this config).

    Raises:
        `UntrustedAdapterError`: naming the tensor and the problem, or the mix of two saves (nothing is loaded).
    """
    where = f"the weights loaded for adapter {adapter_name!r}"
    raw = config.to_dict()
    tuner = getattr(model, "base_model", None)
    expected, limits = None, index_limits(raw)
    if raw.get("target_shapes") is None and hasattr(tuner, "adapter_state_dict"):
        expected = {key: tuple(t.shape) for key, t in tuner.adapter_state_dict(adapter_name).items()}
        limits = {name: layer.get_base_layer().weight.numel() for name, layer in tuner.gradiend_layers(adapter_name).items()}
    check_tensor_names({key: tuple(t.shape) for key, t in state_dict.items()}, raw, where, expected=expected)
    check_tensor_values(state_dict, where, limits)
    recorded, config.weights_digest = config.weights_digest, None
    if recorded is not None and weights_digest(state_dict) != recorded:
        raise UntrustedAdapterError(
            f"The weights loaded for adapter {adapter_name!r} are not the ones saved with its {CONFIG_NAME} (whose "
            f"weights_digest is {recorded[:23]}...): the folder's files come from two saves. Another save wrote into "
            "the folder while it was read, a save was cut short, or a file was replaced. No tensor was loaded. Load it "
            "again once the other save has finished; if this persists, save the adapter into the folder again.")


# ----------------------------------------------------------------------------------------- the library's reader
@contextlib.contextmanager
def _checked_headers(source: AdapterFolder, base_model: Optional[nn.Module]) -> Iterator[tuple[dict, dict, str]]:
    """Under the folder's shared lock: the checked config, the headers of its weight files (file -> header, their
    names, shapes and dtypes checked against the config), and the path errors name."""
    with source.opened() as (fd, sharded):
        raw = parse_config(source.read_bytes(fd, CONFIG_NAME, MAX_CONFIG_BYTES), os.path.join(source.path, CONFIG_NAME))
        where = os.path.join(source.path, INDEX_NAME if sharded else WEIGHTS_NAME)
        index = parse_index(source.read_bytes(fd, INDEX_NAME, MAX_INDEX_BYTES), where) if sharded else None
        opened: list[int] = []
        try:
            headers = {}
            for file in index or [WEIGHTS_NAME]:
                try:
                    opened.append(source.open(fd, file))
                except FileNotFoundError:
                    if index is None:
                        raise
                    raise UntrustedAdapterError(f"The sharded adapter in {source.path!r} lacks its shard file {file!r}: "
                                                "an incomplete copy. Copy or download the whole folder again.") from None
                headers[file] = SafetensorsHeader(opened[-1], os.path.join(source.path, file))
            if index is not None:
                check_shard_headers(headers, index, source.path)
            shapes = {name: shape for header in headers.values() for name, shape in header.shapes().items()}
            check_tensor_names(shapes, raw, where, base_model=base_model)
            check_tensor_dtypes({n: d for header in headers.values() for n, d in header.dtypes().items()}, where)
            yield raw, headers, where
        finally:
            for descriptor in opened:
                os.close(descriptor)


def check_adapter_files(source: AdapterFolder) -> dict[str, Any]:
    """The checks of `read_adapter` that need no tensor values (config, index, headers: names, shapes, dtypes);
    returns the config. What a save checks before it commits."""
    with _checked_headers(source, None) as (raw, _, _):
        return raw


def read_adapter(source: AdapterFolder, base_model: Optional[nn.Module] = None,
                 names: Optional[set[str]] = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked config and tensors of the adapter in ``source``: every file read once, under the folder's shared
    lock (a local folder: no save commits meanwhile), and every check of `config_from_pretrained` and
    `check_state_dict` done on what was read (without ``target_shapes`` in the config, the tensors are checked
    against ``base_model``'s modules). ``names`` reads only those tensors (one process's share); the weights digest,
    which covers all of them, is then not checked.

    Raises:
        `UntrustedAdapterError`: naming the file, the tensor and the problem.
    """
    with _checked_headers(source, base_model) as (raw, headers, where):
        tensors = {name: tensor for header in headers.values() for name, tensor in header.read(names).items()}
    limits = index_limits(raw)
    if not limits and base_model is not None:
        modules = dict(base_model.named_modules())
        held = {parsed[0] for parsed in map(module_of, tensors) if parsed is not None}
        limits = {name: modules[name].weight.numel() for name in held if getattr(modules.get(name), "weight", None) is not None}
    check_tensor_values(tensors, where, limits)
    recorded = raw.get("weights_digest")
    if names is None and recorded is not None and weights_digest(tensors) != recorded:
        raise UntrustedAdapterError(
            f"{where} does not hold the weights saved with {os.path.join(source.path, CONFIG_NAME)} (whose "
            f"weights_digest is {recorded[:23]}...): the files come from two saves (a save was cut short, or a file "
            "was replaced). Save the adapter into the folder again.")
    return raw, tensors


# ------------------------------------------------------------------------------------------------ the writer
def save_config(config: Any, folder: str, auto_mapping_dict: Optional[dict] = None) -> None:
    """``GradiendConfig.save_pretrained``: writes ``adapter_config.json`` into ``folder`` atomically, with the digest
    of the weights now in the folder (`weights_digest`), holding the folder's exclusive lock. An interrupted commit
    of the library's is discarded first, after checking its journal: peft's ``save_pretrained`` has already written
    the weights in place, and finishing the old commit would move older files over them.

    Raises:
        `ValueError`: if the weights next to it were pickled (``safe_serialization=False``): nothing is written.
        `UntrustedAdapterError`: for a journal gradiend_peft did not write, or a weights file that is a link.
    """
    if os.path.isfile(folder):
        raise ValueError(f"Provided path ({folder}) should be a directory, not a file")
    os.makedirs(folder, exist_ok=True)
    output = config.to_dict()
    for key, value in output.items():
        if isinstance(value, set):
            output[key] = sorted(value)
    if auto_mapping_dict is not None:
        output["auto_mapping"] = auto_mapping_dict
    with folder_lock(folder) as fd:
        discard_interrupted_commits(folder, fd, _ADAPTER_FILES.fullmatch, _WEIGHT_FILES.fullmatch)
        _refuse_pickled(folder)
        output["weights_digest"] = _folder_digest(AdapterFolder(folder, True), fd)
        atomic_write_at(fd, CONFIG_NAME, json.dumps(output, indent=2, sort_keys=True).encode("utf-8"))


def _refuse_pickled(folder: str) -> None:
    """peft's ``save_pretrained(safe_serialization=False)`` writes ``adapter_model.bin`` (and leaves an older
    ``adapter_model.safetensors``) before it writes the config: refuse, so that no config describes old weights."""
    try:
        pickled = os.lstat(os.path.join(folder, PICKLED_WEIGHTS_NAME)).st_mtime_ns
    except FileNotFoundError:
        return
    try:
        safe = os.lstat(os.path.join(folder, WEIGHTS_NAME)).st_mtime_ns
    except FileNotFoundError:
        safe = None
    if safe is None or pickled >= safe:
        raise ValueError(
            f"GRADIEND adapters are saved and loaded as safetensors only, but {folder!r} has a {PICKLED_WEIGHTS_NAME} "
            f"newer than its {WEIGHTS_NAME} (save_pretrained(safe_serialization=False)). {CONFIG_NAME} was not written, "
            "so the folder keeps its previous config and safetensors weights, and no loader reads the pickle. Save "
            f"again with safe_serialization=True (the default) and delete {PICKLED_WEIGHTS_NAME}.")


def _folder_digest(source: AdapterFolder, fd: int) -> Optional[str]:
    """`weights_digest` of the weights in the folder (one file, or an index and its shards; ``None`` if neither)."""
    names = [WEIGHTS_NAME]
    if not os.path.lexists(os.path.join(source.path, WEIGHTS_NAME)):
        if not os.path.lexists(os.path.join(source.path, INDEX_NAME)):
            return None
        names = list(parse_index(source.read_bytes(fd, INDEX_NAME, MAX_INDEX_BYTES), os.path.join(source.path, INDEX_NAME)))
    opened = [source.open(fd, name) for name in names]
    try:
        return SafetensorsHeader.digest_of([SafetensorsHeader(d, os.path.join(source.path, n)) for d, n in zip(opened, names)])
    finally:
        for descriptor in opened:
            os.close(descriptor)
