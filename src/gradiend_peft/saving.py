"""Saving GRADIEND adapters, and sharing them on the Hugging Face Hub with a model card of their own.

peft's ``model.save_pretrained(folder)`` is the documented save: GRADIEND's config hook makes it as safe as peft
leaves room for (see `gradiend_peft.tuner.persistence`), but peft writes the weights in place before it calls the
hook, so a kill during that write loses the previous adapter (the next load refuses the cut file or the mix).
`save_adapter` is the save that cannot lose anything: the same files staged in a hidden folder inside the
destination and committed as one set under a journal (`gradiend_peft.atomic`), plus the GRADIEND model card; the
trainer's CLI and the examples use it. `save_sharded_adapter` saves an adapter whose modules are split over processes
(a module-sharded training run), one file per shard plus an index, with the same atomicity. `finish_interrupted_save`
is the owner's explicit way to complete a save that a crash interrupted (loads refuse such a folder).

``model.push_to_hub(repo_id)`` (peft's verb) uploads a loadable adapter, but on a new repository transformers
writes its generic card (``library_name: transformers``) after peft's save, and neither leaves a hook to change that.
`push_adapter_to_hub` uploads the same files with a GRADIEND card in one commit: ``library_name: peft``, the base
model, the feature's classes and their encoding signs, the targets and, after training, the convergence verdict.
On a repository that already holds that card, ``push_to_hub`` keeps it (transformers reloads the card it finds).
`write_model_card` writes the card into a folder.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

from .atomic import (
    UntrustedAdapterError,
    abort_staging,
    atomic_write_json,
    begin_staging,
    commit_staging,
    open_regular_file,
    recover_directory,
    staged_files,
)
from .tuner.config import GradiendConfig
from .tuner.constants import (
    ADAPTER_FILES,
    CARD_NAME,
    CONFIG_NAME,
    INDEX_NAME,
    TRAINING_SUMMARY_NAME,
    WEIGHT_FILES,
    WEIGHTS_NAME,
)
from .tuner.persistence import AdapterFolder, check_adapter_files
from .tuner.untrusted import MAX_INDEX_BYTES, SafetensorsHeader, parse_index, shard_file_name

logger = logging.getLogger(__name__)
_ADAPTER_FILES = re.compile(ADAPTER_FILES)
_WEIGHT_FILES = re.compile(WEIGHT_FILES)


def _card_text(config: GradiendConfig, repo_id: Optional[str], training_summary: Optional[dict] = None,
               sharded: bool = False) -> str:
    classes = config.feature_classes or []
    signs = config.class_signs or {}
    lines = [
        f"# GRADIEND adapter{f' {repo_id}' if repo_id else ''}",
        "",
        "A [GRADIEND](https://arxiv.org/abs/2502.01406) feature adapter made with "
        "[gradiend_peft](https://pypi.org/project/gradiend-peft/): a gradient encoder-decoder that learned where the "
        "base model encodes a feature, and a decoder that rewrites the weights to strengthen or weaken it.",
        "",
        "## Feature",
        "",
    ]
    if classes:
        lines += [f"- class `{name}` encodes to {signs.get(name, 0):+.0f}" for name in classes]
    else:
        lines.append("- feature classes were not recorded")
    n_targets = len(config.target_shapes or {})
    lines += [
        "",
        "## Adapter",
        "",
        f"- base model: `{config.base_model_name_or_path or 'not recorded'}`",
        f"- target modules: {n_targets} ({'pruned' if config.kept_entries else 'unpruned'})",
        f"- latent dimension: {config.latent_dim}; activation: {config.activation}",
        f"- encoder reads the `{config.source}` gradient; decoder reconstructs the `{config.target}` gradient",
        f"- objective: {config.objective}",
    ]
    if training_summary:
        lines += ["", "## Training", "", "```json", json.dumps(training_summary, indent=2, sort_keys=True), "```"]
    auto_class = "AutoModelForMaskedLM" if config.objective == "masked_lm" else "AutoModelForCausalLM"
    if config.feature_factor is not None and config.lr is not None:
        merge = f"model.merge_and_unload()  # the stored rewrite: feature_factor={config.feature_factor:g}, lr={config.lr:g}"
    else:
        merge = "model.merge_and_unload(feature_factor=..., lr=...)  # choose them with gradiend_peft.search_rewrite"
    # peft's single-file reader checks a GRADIEND adapter through its hooks; a sharded one needs the library's reader
    loader = "gradiend_peft.load_gradiend_model" if sharded else "PeftModel.from_pretrained"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import gradiend_peft  # registers GRADIEND with peft: import it before loading",
        f"from transformers import {auto_class}",
        *([] if sharded else ["from peft import PeftModel"]),
        "",
        f"base = {auto_class}.from_pretrained({(config.base_model_name_or_path or 'BASE_MODEL')!r})",
        f"model = {loader}(base, {repo_id or 'ADAPTER_REPO'!r})",
        f"edited = {merge}",
        "```",
    ]
    if config.objective == "auto":
        lines.append("\n(For a masked LM, load the base with `AutoModelForMaskedLM` instead.)")
    return "\n".join(lines) + "\n"


def is_gradiend_card(path: str) -> bool:
    """Whether the ``README.md`` at ``path`` is a model card that `write_model_card` wrote (its metadata carries the
    ``gradiend`` tag and ``library_name: peft``)."""
    try:
        card = ModelCard.load(path)
    except Exception:  # noqa: BLE001 - any unreadable card is not ours
        return False
    data = card.data.to_dict() if card.data is not None else {}
    return data.get("library_name") == "peft" and "gradiend" in (data.get("tags") or [])


def write_model_card(model: PeftModel, directory: str, repo_id: Optional[str] = None, adapter_name: Optional[str] = None,
                     training_summary: Optional[dict] = None, sharded: bool = False) -> str:
    """Writes the GRADIEND model card (``README.md``) of ``model``'s adapter into ``directory``; returns its path.

    ``training_summary`` (``trainer.training_summary``) adds a "Training" section with the convergence verdict;
    ``sharded`` names the loader of a module-sharded adapter in the usage snippet."""
    name = adapter_name or model.active_adapter
    config: GradiendConfig = model.peft_config[name]
    data: dict[str, Any] = {"library_name": "peft", "tags": ["gradiend", "peft", "feature-editing"]}
    if config.base_model_name_or_path:
        data["base_model"] = config.base_model_name_or_path
        data["tags"].append(f"base_model:adapter:{config.base_model_name_or_path}")
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n{_card_text(config, repo_id, training_summary, sharded)}")
    path = os.path.join(directory, CARD_NAME)
    card.save(path)
    return path


def push_adapter_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload GRADIEND adapter",
    revision: Optional[str] = None,
) -> str:
    """Uploads ``model``'s adapter (config, safetensors weights, GRADIEND model card) to ``repo_id``.

    Args:
        model (`PeftModel`): A model with a GRADIEND adapter.
        repo_id (`str`): ``user/name`` of the (new or existing) model repository.
        private (`bool`, *optional*): Create the repository private.
        token (`str`, *optional*): A Hub token (default: the stored login).
        commit_message (`str`): The commit message.
        revision (`str`, *optional*): The branch to push to.

    Returns:
        `str`: the URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        write_model_card(model, folder, repo_id=repo_id)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)
    return str(getattr(info, "commit_url", info))


def _is_file(path: str) -> bool:
    return os.path.isfile(path) and not os.path.islink(path)


def superseded_weight_files(folder: str, staged: list[str]) -> list[str]:
    """The weight files of the adapter in ``folder`` that the staged set replaces under other names: after a
    single-file save, the index and the shard files it names; after a sharded save, a single
    ``adapter_model.safetensors`` and the previous index's shards that the new set does not hold. Only shards that a
    valid GRADIEND index names go: a file that is merely named like one stays. (Called by a commit, under the
    lock of the folder it commits into.)

    Raises:
        `UntrustedAdapterError`: for a single-file save beside an index that is not a GRADIEND index (the save does
            not know which files are ours, and the folder would hold two adapters): nothing is written.
    """
    single = WEIGHTS_NAME in staged
    remove = [] if single or not _is_file(os.path.join(folder, WEIGHTS_NAME)) else [WEIGHTS_NAME]
    index = os.path.join(folder, INDEX_NAME)
    if not os.path.lexists(index):
        return remove
    try:
        with os.fdopen(open_regular_file(index), "rb") as handle:
            shards = parse_index(handle.read(MAX_INDEX_BYTES + 1), index)
    except UntrustedAdapterError as err:
        if single:
            raise UntrustedAdapterError(
                f"{folder!r} holds an {INDEX_NAME} that is not a GRADIEND adapter's index ({err}), so the save cannot "
                "tell which shard files are its own, and beside a single-file adapter it would leave two adapters in "
                "the folder. Nothing was written: move the index (and its shard files) away, then save again.") from err
        shards = {}
    remove += [name for name in shards if name not in staged and _is_file(os.path.join(folder, name))]
    return remove + ([INDEX_NAME] if single else [])


def _commit(folder: str, staging: str) -> None:
    """Commits an adapter's staged files into ``folder``, the config first. A reader without the lock that reads the
    config first and the weights later (peft's) then gets a mix only if its config read falls before the first move
    and its weights read after the last (weights first would add the moves in between to that window); the weights
    digest refuses the mix either way."""
    commit_staging(folder, staging, _ADAPTER_FILES.fullmatch, _WEIGHT_FILES.fullmatch, superseded_weight_files,
                   first=(CONFIG_NAME,))


def finish_interrupted_save(folder: str) -> None:
    """Completes the save into ``folder`` that a crash interrupted (loads refuse a folder holding its journal, and do
    not change it): for the folder's owner. A save into the folder does the same on its own.

    Raises:
        `UntrustedAdapterError`: if the journal names anything but the files gradiend_peft writes into an adapter
            folder, or its paths are links (see `gradiend_peft.atomic.commit_staging`); nothing is written.
    """
    recover_directory(folder, _ADAPTER_FILES.fullmatch, _WEIGHT_FILES.fullmatch)


def _keep_users_readme(directory: str, folder: str) -> None:
    """Drops the staged card where ``directory`` holds a ``README.md`` that is not a GRADIEND card (the user's)."""
    existing = os.path.join(directory, CARD_NAME)
    if CARD_NAME in staged_files(folder) and _is_file(existing) and not is_gradiend_card(existing):
        os.unlink(os.path.join(folder, CARD_NAME))  # a README.md of the user's own: keep it
        logger.warning("Kept the existing %s (not a GRADIEND model card); the adapter's card was not written. Save "
                       "into a folder of its own to get the card.", existing)


def save_adapter(model: PeftModel, directory: str, training_summary: Optional[dict] = None, **kwargs: Any) -> str:
    """``model.save_pretrained(directory)`` made atomic, plus the GRADIEND model card; returns ``directory``.

    Each adapter's files (``adapter_config.json``, ``adapter_model.safetensors``, the card ``README.md`` and, with
    ``training_summary`` (``trainer.training_summary``), ``gradiend_training_summary.json``) are staged and committed
    as one set (a non-default adapter into ``directory/<name>``, as peft lays them out): a kill before the commit
    leaves the old adapter; a kill during it leaves a journal, and loads refuse the folder until the next save (or
    `finish_interrupted_save`) completes the commit to the new adapter. Anything else in ``directory``
    stays as it was; a ``README.md`` that is not a GRADIEND card is kept. A sharded adapter saved there before (the
    index and the shard files a valid GRADIEND index names) is removed by the same commit, so that the folder holds
    one adapter.

    Args:
        model (`PeftModel`): A model with GRADIEND adapters.
        directory (`str`): The destination folder (created if needed).
        training_summary (`dict`, *optional*): ``trainer.training_summary``, saved beside the adapter.
        kwargs: Passed to ``model.save_pretrained`` (e.g. ``selected_adapters``).

    Raises:
        `ValueError`: for ``safe_serialization=False`` (GRADIEND saves and loads safetensors only).
        `IsADirectoryError` / `FileExistsError`: if a file the save writes is taken by a folder or a link (nothing is
            written).
        `UntrustedAdapterError`: if ``directory`` holds an interrupted commit whose journal fails the checks.
    """
    if kwargs.get("safe_serialization", True) is not True:
        raise ValueError("save_adapter saves safetensors only (gradiend_peft never loads a pickled adapter_model.bin): "
                         "leave safe_serialization at its default, True.")
    names = kwargs.pop("selected_adapters", None) or list(model.peft_config)
    targets = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME] + ([TRAINING_SUMMARY_NAME] if training_summary is not None else [])
    for name in names:
        folder = directory if name == "default" else os.path.join(directory, name)
        staging = begin_staging(folder, targets)
        try:
            model.save_pretrained(staging, selected_adapters=[name], **kwargs)
            if name != "default":  # peft writes a non-default adapter into <folder>/<name>: stage it flat
                for file in staged_files(os.path.join(staging, name)):
                    os.replace(os.path.join(staging, name, file), os.path.join(staging, file))
                os.rmdir(os.path.join(staging, name))
            write_model_card(model, staging, adapter_name=name, training_summary=training_summary)
            if training_summary is not None:
                atomic_write_json(os.path.join(staging, TRAINING_SUMMARY_NAME), training_summary)
            _keep_users_readme(folder, staging)
        except BaseException:
            abort_staging(staging)
            raise
        _commit(folder, staging)
    return directory


def _write_config(model: PeftModel, adapter_name: str, folder: str) -> None:
    """``adapter_config.json`` as ``PeftModel.save_pretrained`` writes it (inference mode, base model, auto mapping,
    and the digest of the shards already in ``folder``)."""
    config = copy.deepcopy(model.peft_config[adapter_name])
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path", None) or None
    config.inference_mode = True
    mapping = None
    if config.task_type is None:
        base_class = model._get_base_model_class(is_prompt_tuning=False)
        mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    config.save_pretrained(folder, auto_mapping_dict=mapping)


def _write_shard(model: PeftModel, adapter_name: str, path: str, shared: bool) -> None:
    from safetensors.torch import save_file

    state = model.base_model.adapter_state_dict(adapter_name, shared=shared)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_index(folder: str, shards: int) -> None:
    weight_map, total = {}, 0
    for i in range(1, shards + 1):
        name = shard_file_name(i, shards)
        fd = open_regular_file(os.path.join(folder, name))
        try:
            header = SafetensorsHeader(fd, os.path.join(folder, name))
        finally:
            os.close(fd)
        for key, (_, _, begin, end) in header.entries.items():
            if key in weight_map:
                raise ValueError(f"Tensor {key!r} is in shard files {weight_map[key]!r} and {name!r}: two processes "
                                 "hold the same module. The shard plan must be disjoint.")
            weight_map[key] = name
            total += end - begin
    atomic_write_json(os.path.join(folder, INDEX_NAME), {"metadata": {"total_size": total},
                                                         "weight_map": dict(sorted(weight_map.items()))})


def save_sharded_adapter(model: PeftModel, directory: str, shard: int, shards: int, writes: bool = True,
                         training_summary: Optional[dict] = None) -> str:
    """Saves a module-sharded adapter: every process's shard into one safetensors file, an index, one config for
    the whole adapter and the card; returns the adapter's folder. Collective: EVERY process of the default process
    group calls it (the same ``directory``, on a filesystem all processes see).

    Layout (transformers' sharded checkpoints): ``adapter_model-00001-of-00002.safetensors``, ... (shard 1 also holds
    the shared encoder bias and gradient scale), ``adapter_model.safetensors.index.json`` (``weight_map``: tensor
    name -> file), ``adapter_config.json`` (all targets, ``target_shapes``), ``README.md`` and, with
    ``training_summary``, ``gradiend_training_summary.json``. `gradiend_peft.load_gradiend_model` loads it as one
    adapter in one process. A non-default adapter goes into ``directory/<adapter_name>``, as peft does.

    Protocol: process 0 makes a staging folder inside the destination (`gradiend_peft.atomic.begin_staging`) and
    sends its path to all; each writing process writes its shard file there; the outcomes are gathered; process 0
    writes the index, the config and the card, checks the names and shapes of every file against the config, and
    commits the whole set under a journal (`gradiend_peft.atomic.commit_staging`), which also deletes the old
    adapter's weight files that the new set does not replace (a single ``adapter_model.safetensors``, shards of
    another count). A kill before the journal leaves the old adapter; after it, loads refuse the folder until the next
    save (or `finish_interrupted_save`) completes the commit. Every process returns or raises together.

    Args:
        model (`PeftModel`): This process's model; its active adapter holds this process's modules.
        directory (`str`): The destination folder.
        shard (`int`): This process's shard, ``0 <= shard < shards``.
        shards (`int`): The number of shards.
        writes (`bool`): Whether this process writes its shard (one replica per shard does; data-parallel
            copies of a shard do not).
        training_summary (`dict`, *optional*): ``trainer.training_summary``, saved beside the adapter.

    Raises:
        `RuntimeError`: on every process, when any process failed (the destination is then unchanged).
    """
    import torch.distributed as dist

    name = model.active_adapter
    folder = os.path.abspath(directory if name == "default" else os.path.join(directory, name))
    rank = dist.get_rank()
    message: list[Any] = [None, None]  # staging folder, error
    if rank == 0:
        try:
            message[0] = begin_staging(folder, [CONFIG_NAME, INDEX_NAME, CARD_NAME])
        except Exception as err:  # noqa: BLE001 - every process must hear of it
            message[1] = f"process 0 could not prepare {folder!r}: {err!r}"
    dist.broadcast_object_list(message, src=0)
    staging, error = message
    if error is None and writes:
        try:
            if not os.path.isdir(staging):
                raise FileNotFoundError(f"{staging!r} is not visible from this process: save into a folder on a "
                                        "filesystem that every process shares.")
            _write_shard(model, name, os.path.join(staging, shard_file_name(shard + 1, shards)), shared=shard == 0)
        except Exception as err:  # noqa: BLE001
            error = f"process {rank} (shard {shard + 1} of {shards}) could not write its file: {err!r}"
    errors: list[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    error = next((e for e in errors if e is not None), None)
    outcome: list[Optional[str]] = [error]
    if rank == 0 and staging is not None:
        try:
            if error is not None:
                abort_staging(staging)
            else:
                try:
                    _write_index(staging, shards)
                    _write_config(model, name, staging)
                    check_adapter_files(AdapterFolder(staging, True))
                    write_model_card(model, staging, training_summary=training_summary, sharded=True)
                    if training_summary is not None:
                        atomic_write_json(os.path.join(staging, TRAINING_SUMMARY_NAME), training_summary)
                    _keep_users_readme(folder, staging)
                except BaseException:
                    abort_staging(staging)
                    raise
                _commit(folder, staging)  # removes the staging itself if it fails before its journal
        except Exception as err:  # noqa: BLE001
            outcome[0] = f"process 0 could not commit the sharded adapter: {err!r}"
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise RuntimeError(f"Saving the sharded adapter into {folder!r} failed; the folder is unchanged. {outcome[0]}")
    return folder
