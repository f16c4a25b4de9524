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


# ------------------------------------------------------------------------------------ sharded adapters
def _shard(path, files: int = 2) -> dict:
    """Turns the single-file adapter at ``path`` into a sharded one (modules dealt round-robin, the shared tensors in
    file 1), as a module-sharded training run saves it; returns the index."""
    tensors = load_file(path / "adapter_model.safetensors")
    modules = sorted({key.rsplit(".", 1)[0] for key in tensors if key.startswith("base_model.model.")})
    owner = {module: i % files for i, module in enumerate(modules)}
    parts = [{} for _ in range(files)]
    for key, value in tensors.items():
        parts[owner[key.rsplit(".", 1)[0]] if key.startswith("base_model.model.") else 0][key] = value
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"adapter_model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file(part, path / name)
        weight_map.update({key: name for key in part})
    (path / "adapter_model.safetensors").unlink()
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "adapter_model.safetensors.index.json").write_text(json.dumps(index))
    return index


def _write_index(path, index):
    (path / "adapter_model.safetensors.index.json").write_text(json.dumps(index))


def test_a_sharded_adapter_loads_as_one_adapter(saved):
    model, path = saved
    _shard(path, files=3)
    loaded = load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))
    for key, value in model.state_dict().items():
        if "gradiend" in key:
            assert torch.equal(loaded.state_dict()[key], value), key
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, as PeftModel.from_pretrained
    trainable = load_gradiend_model(MODEL_BUILDERS["bert"](), str(path), is_trainable=True)
    assert trainable.base_model.gradiend_encoder_bias["default"].requires_grad


def test_a_sharded_adapter_with_a_missing_shard_file_is_refused(saved):
    _, path = saved
    _shard(path)
    (path / "adapter_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UntrustedAdapterError, match="lacks its shard file 'adapter_model-00002-of-00002"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_an_index_that_leaves_out_a_shard_is_refused(saved):
    _, path = saved
    index = _shard(path)
    index["weight_map"] = {k: v.replace("-of-00002", "-of-00003") for k, v in index["weight_map"].items()}
    _write_index(path, index)
    with pytest.raises(UntrustedAdapterError, match="names no tensor in shard file"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_an_index_that_lists_a_tensor_twice_is_refused(saved):
    _, path = saved
    index = _shard(path)
    key, file = next(iter(index["weight_map"].items()))
    text = json.dumps(index)[:-2] + f', "{key}": "{file}"}}}}'  # the same name again, as JSON text allows
    (path / "adapter_model.safetensors.index.json").write_text(text)
    with pytest.raises(UntrustedAdapterError, match="more than once"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_a_tensor_in_two_shard_files_is_refused(saved):
    _, path = saved
    index = _shard(path)
    key = next(k for k, v in index["weight_map"].items() if v.startswith("adapter_model-00002"))
    first = path / "adapter_model-00001-of-00002.safetensors"
    tensors = load_file(first)
    tensors[key] = load_file(path / "adapter_model-00002-of-00002.safetensors")[key]
    save_file(tensors, first)
    with pytest.raises(UntrustedAdapterError, match="the index puts it in 'adapter_model-00002-of-00002"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_a_tensor_outside_the_index_is_refused(saved):
    _, path = saved
    index = _shard(path)
    key = next(iter(index["weight_map"]))
    del index["weight_map"][key]
    _write_index(path, index)
    with pytest.raises(UntrustedAdapterError, match="the index does not list it"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


@pytest.mark.parametrize("file", ["../x.safetensors", "/etc/passwd", "sub/adapter_model-00001-of-00002.safetensors",
                                  "adapter_model-00003-of-00002.safetensors", "model.safetensors", 7])
def test_an_index_naming_a_file_outside_the_adapter_is_refused(saved, file):
    _, path = saved
    index = _shard(path)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = file
    _write_index(path, index)
    with pytest.raises(UntrustedAdapterError, match="not a shard file name|impossible shard file"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_non_finite_values_in_a_shard_are_refused(saved):
    _, path = saved
    _shard(path)
    second = path / "adapter_model-00002-of-00002.safetensors"
    tensors = load_file(second)
    key = next(iter(tensors))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, second)
    with pytest.raises(UntrustedAdapterError, match="NaN or infinite"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_a_folder_with_a_single_file_and_a_sharded_adapter_is_refused(saved):
    model, path = saved
    _shard(path)
    model.save_pretrained(path)  # peft's own save writes the single file beside the shards
    with pytest.raises(UntrustedAdapterError, match="holds both"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_save_adapter_over_a_sharded_adapter_removes_the_shards(saved):
    from gradiend_peft import save_adapter

    model, path = saved
    _shard(path)
    (path / "notes.txt").write_text("mine")
    save_adapter(model, str(path))
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                      "notes.txt"]
    load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))
