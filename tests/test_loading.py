"""Loading adapters safely: crafted, malformed and mismatched files are refused before any tensor loads."""

import json
import shutil

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from gradiend_peft import GradiendConfig, UntrustedAdapterError, load_gradiend_model
from gradiend_peft.hub import write_model_card

from tiny import MODEL_BUILDERS


@pytest.fixture()
def saved(tmp_path):
    model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=0, feature_classes=["M", "F"]))
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _edit_config(path, **changes):
    raw = json.loads((path / "adapter_config.json").read_text())
    raw.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(raw))


def test_load_gradiend_model_round_trip(saved):
    model, path = saved
    loaded = load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))
    for key, value in model.state_dict().items():
        if "gradiend" in key:
            assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"peft_type": "LORA"}, "not a GRADIEND config"),
        ({"latent_dim": "1"}, "latent_dim must be an integer"),
        ({"latent_dim": 10**9}, "latent_dim must be an integer"),
        ({"target_modules": 5}, "target_modules must be a string or a list"),
        ({"target_shapes": {"../../etc/passwd": [2, 2]}}, "invalid module name"),
        ({"target_shapes": {"a.b": [2**40, 2**40]}}, "not a valid weight shape"),
        ({"kept_entries": {"a/b": 1}}, "invalid module name"),
        ({"activation": ["tanh"]}, "activation must be a string"),
        ({"base_model_name_or_path": "x\u0000y"}, "base_model_name_or_path is malformed"),
    ],
)
def test_malformed_configs_are_refused(saved, changes, message):
    _, path = saved
    _edit_config(path, **changes)
    with pytest.raises(UntrustedAdapterError, match=message):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_config_that_is_not_json_is_refused(saved):
    _, path = saved
    (path / "adapter_config.json").write_text("{'peft_type': 'GRADIEND'")
    with pytest.raises(UntrustedAdapterError, match="not valid JSON"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_tensors_disagreeing_with_the_config_are_refused(saved):
    _, path = saved
    tensors = load_file(path / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("gradiend_encoder"))
    tensors[key] = torch.zeros(1, 3, 3)
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(UntrustedAdapterError, match="has shape \\(1, 3, 3\\)"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_extra_tensors_are_refused(saved):
    _, path = saved
    tensors = load_file(path / "adapter_model.safetensors")
    tensors["base_model.model.bert.embeddings.word_embeddings.weight"] = torch.zeros(2, 2)
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(UntrustedAdapterError, match="tensors the config does not describe"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_pickled_weights_are_never_loaded(saved, tmp_path_factory):
    _, path = saved
    pickled = tmp_path_factory.mktemp("pickled")
    shutil.copy(path / "adapter_config.json", pickled / "adapter_config.json")
    torch.save({"x": torch.zeros(1)}, pickled / "adapter_model.bin")
    with pytest.raises(UntrustedAdapterError, match="safetensors only"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(pickled))


def test_model_card_names_peft_base_model_and_classes(saved):
    model, path = saved
    model.peft_config["default"].base_model_name_or_path = "org/base"
    card = (path / "README.md")
    write_model_card(model, str(path), repo_id="me/gender")
    text = card.read_text()
    assert text.startswith("---\n") and "library_name: peft" in text and "base_model: org/base" in text
    assert "class `M` encodes to +1" in text and "class `F` encodes to -1" in text
    assert "base = AutoModelForMaskedLM.from_pretrained('org/base')" in text  # a BERT: the masked-LM class
    assert "merge_and_unload(feature_factor=..., lr=...)" in text
    config = model.peft_config["default"]
    config.feature_factor, config.lr = 0.5, 20.0
    try:
        write_model_card(model, str(path), repo_id="me/gender")
    finally:
        config.feature_factor = config.lr = None
    assert "merge_and_unload()  # the stored rewrite: feature_factor=0.5, lr=20" in card.read_text()
