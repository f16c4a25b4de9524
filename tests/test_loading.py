"""Loading adapters safely: crafted, malformed and mismatched files are refused before any tensor loads, by every
reader (`read_adapter`: `load_gradiend_model`, `load_gradiend_adapter`, `PeftModel.from_pretrained`, `load_adapter`;
see conftest.py)."""

import json
import shutil

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from gradiend_peft import GradiendConfig, UntrustedAdapterError, load_gradiend_model, prune_adapter
from gradiend_peft.saving import write_model_card

from helpers import shard_saved_adapter as _shard
from tiny import MODEL_BUILDERS

PEFT_READERS = ("PeftModel.from_pretrained", "load_adapter")


@pytest.fixture()
def saved(tmp_path):
    model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=0, feature_classes=["M", "F"]))
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _edit_config(path, **changes):
    raw = json.loads((path / "adapter_config.json").read_text())
    raw.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(raw))


def _edit_tensors(path, edit):
    """Rewrites the adapter's safetensors file with ``edit(tensors)`` applied, and records the new file's digest in
    the config, so that only what ``edit`` changed is wrong (a crafted file, not a mix of two saves)."""
    from gradiend_peft.tuner.untrusted import weights_digest

    tensors = load_file(path / "adapter_model.safetensors")
    edit(tensors)
    save_file(tensors, path / "adapter_model.safetensors")
    _edit_config(path, weights_digest=weights_digest(tensors))
    return tensors


def _adapter_tensors(model):
    return {k: v.detach().clone() for k, v in model.base_model.adapter_state_dict().items()}


def test_every_reader_loads_the_saved_tensors(saved, read_adapter):
    model, path = saved
    loaded = read_adapter(MODEL_BUILDERS["bert"](), path)
    expected = _adapter_tensors(model)
    assert _adapter_tensors(loaded).keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(_adapter_tensors(loaded)[key], value), key
    assert loaded.peft_config[loaded.active_adapter].weights_digest is None  # checked against the tensors, then used up


def test_load_gradiend_adapter_adds_nothing_when_it_refuses_and_keeps_the_names_it_holds(saved):
    from gradiend_peft.loading import load_gradiend_adapter

    _, path = saved
    model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=7, feature_classes=["M", "F"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already holds an adapter named 'default'"):
        load_gradiend_adapter(model, str(path), "default")
    _edit_tensors(path, lambda t: t["base_model.gradiend_gradient_scale"].fill_(-1.0))
    with pytest.raises(UntrustedAdapterError, match="negative"):
        load_gradiend_adapter(model, str(path), "loaded")
    assert list(model.peft_config) == ["default"]
    after = model.state_dict()  # no tensor of a half-added adapter, and the held one unchanged
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_dim": "1"}, "latent_dim must be an integer"),
        ({"latent_dim": 10**9}, "latent_dim must be an integer"),
        ({"target_modules": 5}, "target_modules must be a string or a list"),
        ({"target_shapes": {"../../etc/passwd": [2, 2]}}, "invalid module name"),
        ({"target_shapes": {"a.b": [2**40, 2**40]}}, "not a valid weight shape"),
        ({"kept_entries": {"a/b": 1}}, "invalid module name"),
        ({"activation": ["tanh"]}, "activation must be a string"),
        ({"base_model_name_or_path": "x\u0000y"}, "base_model_name_or_path is malformed"),
        ({"weights_digest": 7}, "weights_digest must be"),
    ],
)
def test_malformed_configs_are_refused(saved, read_adapter, changes, message):
    _, path = saved
    _edit_config(path, **changes)
    with pytest.raises(UntrustedAdapterError, match=message):
        read_adapter(MODEL_BUILDERS["bert"](), path)


def test_a_config_of_another_method_is_not_a_gradiend_adapter(saved):
    """peft picks the config class from ``peft_type`` before any GRADIEND code runs, so only the library's reader,
    which is for GRADIEND adapters alone, has something to refuse here."""
    _, path = saved
    _edit_config(path, peft_type="LORA")
    with pytest.raises(UntrustedAdapterError, match="not a GRADIEND config"):
        load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


def test_config_that_is_not_json_is_refused(saved, read_adapter, request):
    _, path = saved
    (path / "adapter_config.json").write_text("{'peft_type': 'GRADIEND'")
    if request.node.callspec.params["read_adapter"] in PEFT_READERS:
        expected = json.JSONDecodeError  # peft reads peft_type out of the file before GRADIEND's hooks run
    else:
        expected = UntrustedAdapterError
    with pytest.raises(expected):
        read_adapter(MODEL_BUILDERS["bert"](), path)


def test_tensors_disagreeing_with_the_config_are_refused(saved, read_adapter):
    _, path = saved
    key = next(k for k in load_file(path / "adapter_model.safetensors") if k.endswith("gradiend_encoder"))
    _edit_tensors(path, lambda tensors: tensors.__setitem__(key, torch.zeros(1, 3, 3)))
    with pytest.raises(UntrustedAdapterError, match="has shape \\(1, 3, 3\\)"):
        read_adapter(MODEL_BUILDERS["bert"](), path)


def test_extra_tensors_are_refused(saved, read_adapter):
    """A base-model weight in the adapter file: peft would load it into the base model."""
    _, path = saved
    _edit_tensors(path, lambda t: t.__setitem__("base_model.model.bert.embeddings.word_embeddings.weight", torch.zeros(2, 2)))
    base = MODEL_BUILDERS["bert"]()
    original = base.bert.embeddings.word_embeddings.weight.detach().clone()
    with pytest.raises(UntrustedAdapterError, match="tensors the config does not describe"):
        read_adapter(base, path)
    assert torch.equal(base.bert.embeddings.word_embeddings.weight, original)


def test_pickled_weights_are_never_loaded(saved, tmp_path_factory, read_adapter):
    _, path = saved
    pickled = tmp_path_factory.mktemp("pickled")
    shutil.copy(path / "adapter_config.json", pickled / "adapter_config.json")
    torch.save({"x": torch.zeros(1)}, pickled / "adapter_model.bin")
    with pytest.raises(UntrustedAdapterError, match="safetensors only"):
        read_adapter(MODEL_BUILDERS["bert"](), pickled)


# ------------------------------------------------------------------------------- dtypes and indices (18.8)
@pytest.mark.parametrize("part, dtype", [("gradiend_decoder", torch.int8), ("gradiend_encoder", torch.bool),
                                         ("gradiend_decoder_bias", torch.int32),
                                         ("gradiend_encoder_bias", torch.int64),
                                         ("gradiend_gradient_scale", torch.uint8)])
def test_adapter_tensors_that_are_not_floating_point_are_refused(saved, read_adapter, part, dtype):
    _, path = saved
    key = next(k for k in load_file(path / "adapter_model.safetensors") if k.endswith(part))
    _edit_tensors(path, lambda tensors: tensors.__setitem__(key, tensors[key].to(dtype)))
    with pytest.raises(UntrustedAdapterError, match=f"{key}.*floating point"):
        read_adapter(MODEL_BUILDERS["bert"](), path)


@pytest.fixture()
def pruned(tmp_path):
    model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=0, target_modules=["query", "value"]))
    prune_adapter(model, keep=0.25)
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.mark.parametrize("corruption, message", [
    (lambda idx: idx.to(torch.float32), "kept-entry indices are integers"),
    (lambda idx: torch.cat([idx[:1], idx[:-1]]), "more than once"),
    (lambda idx: torch.cat([idx[:-1], torch.tensor([32 * 32], dtype=idx.dtype)]), "outside its weight"),
    (lambda idx: torch.cat([torch.tensor([-1], dtype=idx.dtype), idx[1:]]), "outside its weight"),
])
def test_kept_indices_must_be_unique_integers_inside_their_weight(pruned, read_adapter, corruption, message):
    _, path = pruned
    key = next(k for k in load_file(path / "adapter_model.safetensors") if k.endswith("gradiend_kept_indices"))
    _edit_tensors(path, lambda tensors: tensors.__setitem__(key, corruption(tensors[key])))
    with pytest.raises(UntrustedAdapterError, match=message) as info:
        read_adapter(MODEL_BUILDERS["bert"](), path)
    assert key in str(info.value)


def test_duplicate_kept_indices_are_refused_without_target_shapes_too(pruned, read_adapter):
    """Without ``target_shapes`` the bound comes from the base model's weight, and duplicates are still refused."""
    _, path = pruned
    raw = json.loads((path / "adapter_config.json").read_text())
    del raw["target_shapes"]
    (path / "adapter_config.json").write_text(json.dumps(raw))
    key = next(k for k in load_file(path / "adapter_model.safetensors") if k.endswith("gradiend_kept_indices"))
    _edit_tensors(path, lambda tensors: tensors.__setitem__(key, torch.cat([tensors[key][:1], tensors[key][:-1]])))
    with pytest.raises(UntrustedAdapterError, match="more than once"):
        read_adapter(MODEL_BUILDERS["bert"](), path)


# ------------------------------------------------------------------------------- a mix of two saves (18.5)
def test_weights_of_another_save_beside_the_config_are_refused(saved, tmp_path_factory, read_adapter):
    """The config records the digest of its weights; weights of another save (same shapes, other values) are a mix."""
    _, path = saved
    other = tmp_path_factory.mktemp("other")
    get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=1, feature_classes=["M", "F"])).save_pretrained(other)
    shutil.copy(other / "adapter_model.safetensors", path / "adapter_model.safetensors")
    with pytest.raises(UntrustedAdapterError, match="come from two saves"):
        read_adapter(MODEL_BUILDERS["bert"](), path)


def test_weights_loaded_without_reading_the_config_are_still_checked(saved, tmp_path_factory):
    """``load_adapter`` into an existing adapter and ``from_pretrained(config=...)`` read only the weights: the
    state-dict hook checks them (values; and the digest of a config read from that folder)."""
    model, path = saved
    config = GradiendConfig.from_pretrained(str(path))
    other = tmp_path_factory.mktemp("other")
    get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=1, feature_classes=["M", "F"])).save_pretrained(other)
    shutil.copy(other / "adapter_model.safetensors", path / "adapter_model.safetensors")
    with pytest.raises(UntrustedAdapterError, match="come from two saves"):
        PeftModel.from_pretrained(MODEL_BUILDERS["bert"](), str(path), config=config)
    _edit_tensors(path, lambda t: t["base_model.gradiend_encoder_bias"].fill_(float("nan")))
    with pytest.raises(UntrustedAdapterError, match="base_model.gradiend_encoder_bias.*NaN"):
        model.load_adapter(str(path), adapter_name="default")


def test_the_digest_is_that_of_the_tensors_in_the_file(saved):
    from gradiend_peft.tuner.untrusted import weights_digest

    model, path = saved
    recorded = json.loads((path / "adapter_config.json").read_text())["weights_digest"]
    assert recorded == weights_digest(load_file(path / "adapter_model.safetensors"))
    assert recorded == weights_digest(_adapter_tensors(model))  # what was in memory when it was saved


# ------------------------------------------------------------------------------------------- sharded adapters
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


def test_peft_readers_refuse_a_sharded_adapter_naming_the_loader_that_reads_it(saved):
    model, path = saved
    _shard(path)
    with pytest.raises(ValueError, match=r"module-sharded.*gradiend_peft\.load_gradiend_model\(base_model"):
        PeftModel.from_pretrained(MODEL_BUILDERS["bert"](), str(path))
    with pytest.raises(ValueError, match=r"module-sharded.*gradiend_peft\.load_gradiend_model\(base_model"):
        model.load_adapter(str(path), adapter_name="sharded")


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


def test_a_folder_with_a_single_file_and_a_sharded_adapter_is_refused(saved, read_adapter):
    model, path = saved
    _shard(path)
    shutil.copy(path / "adapter_model-00001-of-00002.safetensors", path / "adapter_model.safetensors")
    with pytest.raises(UntrustedAdapterError, match="holds both"):
        read_adapter(MODEL_BUILDERS["bert"](), path)


def test_save_adapter_over_a_sharded_adapter_removes_the_shards(saved):
    from gradiend_peft import save_adapter

    model, path = saved
    _shard(path)
    (path / "notes.txt").write_text("mine")
    save_adapter(model, str(path))
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                      "notes.txt"]
    load_gradiend_model(MODEL_BUILDERS["bert"](), str(path))


# ---------------------------------------------------------------------------------------------- never loaded
def test_an_adapter_created_on_the_meta_device_and_never_loaded_says_so(tmp_path):
    model = get_peft_model(MODEL_BUILDERS["llama"](), GradiendConfig(init_seed=0), low_cpu_mem_usage=True)
    for call in (lambda: model.merge_adapter(feature_factor=1.0, lr=1.0), lambda: model.base_model.decode(1.0),
                 lambda: model.save_pretrained(tmp_path)):
        with pytest.raises(RuntimeError, match="meta device.*low_cpu_mem_usage=True and never loaded"):
            call()
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_a_meta_adapter_loads_its_values_with_low_cpu_mem_usage(saved):
    model, path = saved
    loaded = PeftModel.from_pretrained(MODEL_BUILDERS["bert"](), str(path), low_cpu_mem_usage=True)
    for key, value in _adapter_tensors(model).items():
        assert torch.equal(_adapter_tensors(loaded)[key], value), key
    loaded.base_model.decode(1.0)  # every tensor materialised: no refusal


# ------------------------------------------------------------------------------------------------ the card
def test_model_card_names_peft_base_model_and_classes(saved):
    model, path = saved
    model.peft_config["default"].base_model_name_or_path = "org/base"
    card = (path / "README.md")
    write_model_card(model, str(path), repo_id="me/gender")
    text = card.read_text()
    assert text.startswith("---\n") and "library_name: peft" in text and "base_model: org/base" in text
    assert "class `M` encodes to +1" in text and "class `F` encodes to -1" in text
    assert "base = AutoModelForMaskedLM.from_pretrained('org/base')" in text  # a BERT: the masked-LM class
    assert "model = PeftModel.from_pretrained(base, 'me/gender')" in text
    assert "merge_and_unload(feature_factor=..., lr=...)" in text
    config = model.peft_config["default"]
    config.feature_factor, config.lr = 0.5, 20.0
    try:
        write_model_card(model, str(path), repo_id="me/gender", sharded=True)
    finally:
        config.feature_factor = config.lr = None
    assert "merge_and_unload()  # the stored rewrite: feature_factor=0.5, lr=20" in card.read_text()
    assert "model = gradiend_peft.load_gradiend_model(base, 'me/gender')" in card.read_text()
