"""Saving, loading and pruning GRADIEND adapters."""

import json
import os

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from gradiend_peft import GradiendConfig
from gradiend_peft.objective import encode_group, encode_rows
from gradiend_peft.pruning import pre_prune_adapter, prune_adapter

from batches import batch_for
from tiny import MODEL_BUILDERS, tiny_bert


def _peft(family, **kwargs):
    kwargs.setdefault("init_seed", 0)
    return get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(**kwargs))


def _adapter_state(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items() if "gradiend" in n}


def _logits(model, family, **steer):
    batch = batch_for(family)
    with torch.no_grad(), model.base_model.steer(**steer):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_save_and_load_round_trip_gives_identical_tensors_and_outputs(tmp_path, family):
    model = _peft(family, include_embeddings=True, feature_classes=["M", "F"])
    model.base_model.gradiend_gradient_scale["default"].fill_(3.5)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.gradiend_encoder_bias" in saved and "base_model.gradiend_gradient_scale" in saved
    assert not any("base_layer" in key for key in saved)  # no base weights, the embedding's included
    loaded = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path)
    assert _adapter_state(loaded).keys() == _adapter_state(model).keys()
    for key, value in _adapter_state(model).items():
        assert torch.equal(_adapter_state(loaded)[key], value), key
    assert loaded.base_model.gradient_scale() == 3.5
    assert loaded.peft_config["default"].class_signs == {"M": 1.0, "F": -1.0}
    assert torch.equal(_logits(loaded, family, feature_factor=1.0, lr=5.0), _logits(model, family, feature_factor=1.0, lr=5.0))


def test_config_json_loads_back_with_peft(tmp_path):
    model = _peft("bert", feature_classes=["M", "F"], latent_dim=2, source="diff")
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, GradiendConfig)
    assert config.latent_dim == 2 and config.source == "diff" and config.feature_classes == ["M", "F"]
    assert config.target_shapes == model.peft_config["default"].target_shapes
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["peft_type"] == "GRADIEND"


def test_load_under_another_adapter_name(tmp_path):
    model = _peft("llama", init_seed=1)
    model.save_pretrained(tmp_path)
    other = _peft("llama", init_seed=2)
    other.load_adapter(tmp_path, adapter_name="loaded")
    assert set(other.base_model.gradiend_encoder_bias) == {"default", "loaded"}
    for name, layer in other.base_model.gradiend_layers().items():
        original = model.base_model.gradiend_layers()[name]
        assert torch.equal(layer.gradiend_encoder["loaded"], original.gradiend_encoder["default"])
        assert not torch.equal(layer.gradiend_encoder["default"], original.gradiend_encoder["default"])
    assert torch.equal(other.base_model.gradiend_encoder_bias["loaded"], model.base_model.gradiend_encoder_bias["default"])


def test_loading_onto_a_base_of_other_shapes_names_module_and_shapes(tmp_path):
    _peft("bert").save_pretrained(tmp_path)
    wider = tiny_bert(hidden=48)
    with pytest.raises(ValueError, match=r"Module 'bert\.encoder\.layer\.0\.attention\.self\.query' has weight shape \(48, 48\) in this model but \(32, 32\)"):
        PeftModel.from_pretrained(wider, tmp_path)


def test_loading_onto_another_architecture_is_refused(tmp_path):
    _peft("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not fit this model|not found in the base model"):
        PeftModel.from_pretrained(MODEL_BUILDERS["llama"](), tmp_path)


def test_prune_keeps_the_largest_decoder_rows_and_shrinks_the_file(tmp_path):
    model = _peft("bert", include_embeddings=True)
    tuner = model.base_model
    layers = tuner.gradiend_layers()
    scores = torch.cat([layer.gradiend_decoder["default"].abs().sum(0).flatten() for layer in layers.values()])
    threshold = torch.topk(scores, 100).values.min()
    delta_before = {name: layer.delta_weight("default", 1.0, 1.0) for name, layer in layers.items()}
    kept = prune_adapter(model, keep=100)
    assert sum(kept.values()) == 100
    for name, layer in layers.items():
        idx = layer.gradiend_kept_indices["default"]
        full_scores = delta_before[name]  # unpruned decoder row values at kept entries stay the same
        after = layer.delta_weight("default", 1.0, 1.0)
        assert torch.equal(after.flatten()[idx], full_scores.flatten()[idx])
        mask = torch.ones(after.numel(), dtype=torch.bool)
        mask[idx] = False
        assert after.flatten()[mask].abs().sum() == 0
    kept_scores = torch.cat([l.gradiend_decoder["default"].abs().sum(0) for l in layers.values()])
    assert kept_scores.min() >= threshold
    full_dir, pruned_dir = tmp_path / "full", tmp_path / "pruned"
    _peft("bert", include_embeddings=True).save_pretrained(full_dir)
    model.save_pretrained(pruned_dir)
    assert os.path.getsize(pruned_dir / "adapter_model.safetensors") < 0.1 * os.path.getsize(full_dir / "adapter_model.safetensors")


def test_pruned_adapter_saves_loads_and_merges_correctly(tmp_path):
    model = _peft("gpt2", include_embeddings=True)
    prune_adapter(model, keep=0.05)
    expected = _logits(model, "gpt2", feature_factor=-1.0, lr=30.0)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MODEL_BUILDERS["gpt2"](), tmp_path)
    assert loaded.peft_config["default"].kept_entries == model.peft_config["default"].kept_entries
    assert torch.equal(_logits(loaded, "gpt2", feature_factor=-1.0, lr=30.0), expected)
    batch = batch_for("gpt2")
    torch.testing.assert_close(encode_rows(loaded.base_model, batch), encode_rows(model.base_model, batch))
    torch.testing.assert_close(encode_group(loaded.base_model, batch), encode_group(model.base_model, batch))
    merged = loaded.merge_and_unload(feature_factor=-1.0, lr=30.0)
    with torch.no_grad():
        out = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_pruned_encoding_equals_encoding_with_zeroed_entries():
    model = _peft("llama")
    batch = batch_for("llama")
    prune_adapter(model, keep=0.2)
    tuner = model.base_model
    # an unpruned adapter whose encoder is zero outside the kept entries encodes the same
    dense = _peft("llama")
    for name, layer in dense.base_model.gradiend_layers().items():
        pruned_layer = tuner.gradiend_layers()[name]
        layer.gradiend_encoder["default"].data.copy_(pruned_layer.full_encoder("default"))
    dense.base_model.gradiend_encoder_bias["default"].data.copy_(tuner.gradiend_encoder_bias["default"])
    torch.testing.assert_close(encode_group(tuner, batch), encode_group(dense.base_model, batch))
    torch.testing.assert_close(encode_rows(tuner, batch), encode_rows(dense.base_model, batch))


def test_pre_prune_keeps_entries_with_the_largest_mean_gradient():
    model = _peft("bert")
    tuner = model.base_model
    batch = batch_for("bert")
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    from gradiend_peft.objective import batch_gradients

    grads = [batch_gradients(tuner, b, ["alternative"])["alternative"] for b in halves]
    mean = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}
    all_scores = torch.cat([m.abs().flatten() for m in mean.values()])
    threshold = torch.topk(all_scores, 50).values.min()
    pre_prune_adapter(model, halves, keep=50)
    for name, layer in tuner.gradiend_layers().items():
        idx = layer.gradiend_kept_indices["default"]
        assert (mean[name].abs().flatten()[idx] >= threshold).all()
    assert sum(model.peft_config["default"].kept_entries.values()) == 50
    prune_adapter(model, keep=10)  # pruning again composes the indices
    assert sum(model.peft_config["default"].kept_entries.values()) == 10


def test_prune_rejects_bad_keep_values():
    model = _peft("bert")
    for keep, message in [(0.0, "must be in \\(0, 1\\]"), (10**9, "out of range"), ("1%", "keep must be")]:
        with pytest.raises((ValueError, TypeError), match=message):
            prune_adapter(model, keep=keep)


# ------------------------------------------------------------------------------- which files a save touches
def _names(folder):
    return sorted(os.listdir(folder))


def test_files_merely_named_like_shards_are_kept(tmp_path):
    """Only shard files that a valid GRADIEND index names are ours to delete (issue 18.6)."""
    from gradiend_peft import save_adapter

    (tmp_path / "adapter_model-00001-of-00002.safetensors").write_bytes(b"a user's file")
    (tmp_path / "adapter_model-00002-of-00002.safetensors").write_bytes(b"another")
    save_adapter(_peft("llama"), str(tmp_path))
    assert (tmp_path / "adapter_model-00001-of-00002.safetensors").read_bytes() == b"a user's file"
    assert (tmp_path / "adapter_model-00002-of-00002.safetensors").read_bytes() == b"another"


def test_a_single_file_save_beside_an_index_that_is_not_ours_is_refused_and_writes_nothing(tmp_path):
    from gradiend_peft import UntrustedAdapterError, save_adapter

    (tmp_path / "adapter_model.safetensors.index.json").write_text('{"weight_map": {"w": "model.safetensors"}}')
    (tmp_path / "model.safetensors").write_bytes(b"another library's weights")
    with pytest.raises(UntrustedAdapterError, match="not a GRADIEND adapter's index.*move the index"):
        save_adapter(_peft("llama"), str(tmp_path))
    assert _names(tmp_path) == ["adapter_model.safetensors.index.json", "model.safetensors"]


def _reader_config_and_weights(read, folder):
    from tiny import tiny_llama

    loaded = read(tiny_llama(), folder)
    return loaded.peft_config[loaded.active_adapter], loaded.base_model.adapter_state_dict()


def test_pickled_saves_are_refused_and_loads_keep_the_previous_adapter(tmp_path, read_adapter):
    """save_pretrained(safe_serialization=False) beside an older safetensors file must not leave a new config over
    the old weights (issue 18.6): the config is refused, so every reader loads the previous adapter whole."""
    from gradiend_peft import save_adapter

    old = _peft("llama", feature_classes=["M", "F"])
    old.save_pretrained(tmp_path)
    new = _peft("llama", init_seed=2, feature_classes=["A", "B"])
    with pytest.raises(ValueError, match="safetensors only.*adapter_config.json was not written"):
        new.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ValueError, match="safetensors only"):
        save_adapter(new, str(tmp_path), safe_serialization=False)
    config, weights = _reader_config_and_weights(read_adapter, tmp_path)
    assert config.feature_classes == ["M", "F"]
    for key, value in old.base_model.adapter_state_dict().items():
        assert torch.equal(weights[key], value), key
    new.save_pretrained(tmp_path)  # a safetensors save afterwards works: the stale pickle is older now
    config, weights = _reader_config_and_weights(read_adapter, tmp_path)
    assert config.feature_classes == ["A", "B"]
    assert all(torch.equal(weights[k], v) for k, v in new.base_model.adapter_state_dict().items())


@pytest.mark.parametrize("name", ["README.md", "adapter_config.json", "adapter_model.safetensors"])
def test_a_folder_named_like_a_file_we_write_is_refused_up_front_and_the_folder_stays_usable(tmp_path, name,
                                                                                          read_adapter):
    from gradiend_peft import save_adapter

    old = _peft("llama")
    if name == "README.md":
        save_adapter(old, str(tmp_path))
        (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    (tmp_path / name / "inside.txt").write_text("kept")
    before = _names(tmp_path)
    with pytest.raises(IsADirectoryError, match=f"{name}' is a folder, but the save writes a file of that name"):
        save_adapter(_peft("llama", init_seed=2), str(tmp_path))
    assert _names(tmp_path) == before  # no staging folder, no journal
    assert (tmp_path / name / "inside.txt").read_text() == "kept"
    if name == "README.md":  # the adapter saved before still loads
        _, weights = _reader_config_and_weights(read_adapter, tmp_path)
        assert all(torch.equal(weights[k], v) for k, v in old.base_model.adapter_state_dict().items())
    os.rename(tmp_path / name, tmp_path / "moved")
    save_adapter(old, str(tmp_path))  # a later save works
    _, weights = _reader_config_and_weights(read_adapter, tmp_path)
    assert all(torch.equal(weights[k], v) for k, v in old.base_model.adapter_state_dict().items())


def test_peft_save_pretrained_over_a_folder_named_adapter_config_is_refused_clearly(tmp_path):
    (tmp_path / "adapter_config.json").mkdir()
    with pytest.raises(IsADirectoryError, match="'adapter_config.json' is a folder or a link"):
        _peft("llama").save_pretrained(tmp_path)


def test_save_adapter_saves_every_adapter_where_peft_puts_it(tmp_path):
    """A non-default adapter goes into ``<folder>/<name>``, as peft lays it out, each committed as one set."""
    from gradiend_peft import load_gradiend_model, save_adapter
    from tiny import tiny_llama

    model = _peft("llama")
    model.add_adapter("other", GradiendConfig(init_seed=5))
    save_adapter(model, str(tmp_path))
    assert _names(tmp_path) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "other"]
    assert _names(tmp_path / "other") == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = load_gradiend_model(tiny_llama(), str(tmp_path / "other"))
    for key, value in model.base_model.adapter_state_dict("other").items():
        assert torch.equal(loaded.base_model.adapter_state_dict()[key], value), key
