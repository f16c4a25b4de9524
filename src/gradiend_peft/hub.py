"""Sharing GRADIEND adapters on the Hugging Face Hub with a model card of their own.

``model.push_to_hub(repo_id)`` (peft's verb) uploads a loadable adapter, but on a new repository transformers
writes its generic card (``library_name: transformers``) over peft's. `push_adapter_to_hub` uploads the same files
with a GRADIEND card: ``library_name: peft``, the base model, the feature's classes and their encoding signs, the
targets and, after training, the convergence verdict. `write_model_card` writes that card into a folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

from .atomic import atomic_files, atomic_write_json, staged_files
from .tuner.config import GradiendConfig

logger = logging.getLogger(__name__)


def _card_text(config: GradiendConfig, repo_id: Optional[str], training_summary: Optional[dict] = None) -> str:
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
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import gradiend_peft  # registers GRADIEND with peft: import it before loading",
        f"from transformers import {auto_class}",
        "",
        f"base = {auto_class}.from_pretrained({(config.base_model_name_or_path or 'BASE_MODEL')!r})",
        f"model = gradiend_peft.load_gradiend_model(base, {repo_id or 'ADAPTER_REPO'!r})",
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
                     training_summary: Optional[dict] = None) -> str:
    """Writes the GRADIEND model card (``README.md``) of ``model``'s adapter into ``directory``; returns its path.

    ``training_summary`` (``trainer.training_summary``) adds a "Training" section with the convergence verdict."""
    name = adapter_name or model.active_adapter
    config: GradiendConfig = model.peft_config[name]
    data: dict[str, Any] = {"library_name": "peft", "tags": ["gradiend", "peft", "feature-editing"]}
    if config.base_model_name_or_path:
        data["base_model"] = config.base_model_name_or_path
        data["tags"].append(f"base_model:adapter:{config.base_model_name_or_path}")
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n{_card_text(config, repo_id, training_summary)}")
    path = os.path.join(directory, "README.md")
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


TRAINING_SUMMARY_FILE = "gradiend_training_summary.json"


def save_adapter(model: Any, directory: str, training_summary: Optional[dict] = None, **kwargs: Any) -> str:
    """``model.save_pretrained(directory)`` made atomic, plus the GRADIEND model card; returns ``directory``.

    Only the files peft writes (``adapter_config.json``, ``adapter_model.safetensors``, per adapter), the card
    (``README.md``) and, with ``training_summary`` (``trainer.training_summary``), ``gradiend_training_summary.json``
    are replaced; anything else in ``directory`` stays as it was. A ``README.md`` that is not a GRADIEND card is kept.
    """
    with atomic_files(directory) as folder:
        model.save_pretrained(folder, **kwargs)
        if hasattr(model, "peft_config"):
            write_model_card(model, folder, training_summary=training_summary)
        if training_summary is not None:
            atomic_write_json(os.path.join(folder, TRAINING_SUMMARY_FILE), training_summary)
        for card in [f for f in staged_files(folder) if os.path.basename(f) == "README.md"]:
            existing = os.path.join(directory, card)
            if os.path.isfile(existing) and not is_gradiend_card(existing):
                os.unlink(os.path.join(folder, card))  # a README.md of the user's own: keep it
                logger.warning("Kept the existing %s (not a GRADIEND model card); the adapter's card was not "
                               "written. Save into a folder of its own to get the card.", existing)
    return directory
