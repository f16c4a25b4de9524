"""A folder of pair adapters (gradiend_peft.pair_adapters) on the persistence layer of single adapters: the whole
folder is one commit; loads never write, so a folder holding a commit journal (a real interrupted save, or a crafted
one) is refused and nothing anywhere changes; a save or the owner finishes an interrupted save after checking its
journal; a refused load leaves the base model as it was.

Every save here is recognisable, as in tests/test_concurrent_saves.py: each adapter's config ``lr`` is a number that
every value of its weights equals, so a load that returns one save's config with another's weights is seen at once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradiend_peft import UntrustedAdapterError, load_gradiend_model
from gradiend_peft.pair_adapters import finish_interrupted_pair_save, load_pair_adapters, save_pair_adapters

from helpers import subprocess_env
from tiny import tiny_llama

HERE = os.path.dirname(os.path.abspath(__file__))
SAVE = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {here!r})
    import gradiend_peft
    from peft import get_peft_model
    from gradiend_peft.data import Feature
    from gradiend_peft.pair_adapters import save_pair_adapters
    from tiny import tiny_llama

    FEATURE = Feature(classes={{"A": ["he"], "B": ["she"], "C": ["it"]}}, pair=("A", "B"))
    ADAPTERS = {{("A", "B"): "A-vs-B", ("A", "C"): "A-vs-C", ("B", "C"): "B-vs-C"}}

    def marked(value):
        model = None
        for pair, name in ADAPTERS.items():
            config = gradiend_peft.GradiendConfig(init_seed=0, target_modules=["q_proj"], feature_classes=list(pair))
            if model is None:
                model = get_peft_model(tiny_llama(), config, adapter_name=name)
            else:
                model.add_adapter(name, config)
            model.peft_config[name].lr = float(value)
            with torch.no_grad():
                for tensor in model.base_model.adapter_state_dict(name).values():
                    tensor.fill_(value)
        return model
""")
_NAMESPACE: dict = {}
exec(SAVE.format(here=HERE), _NAMESPACE)  # the same helper the child process runs
FEATURE, ADAPTERS, marked = _NAMESPACE["FEATURE"], _NAMESPACE["ADAPTERS"], _NAMESPACE["marked"]


def _which_save(model, names=ADAPTERS.values()) -> float:
    """The save every loaded adapter came from; fails the test on a mix of two saves."""
    found = set()
    for name in names:
        values = {float(v) for t in model.base_model.adapter_state_dict(name).values()
                  for v in t.detach().flatten().unique()}
        assert values == {model.peft_config[name].lr}, f"{name}: config of save {model.peft_config[name].lr}, weights {values}"
        found |= values
    assert len(found) == 1, f"adapters of several saves: {sorted(found)}"
    return found.pop()


def _tree(root) -> dict:
    """Every path below ``root`` (links not followed) -> its bytes, its link target, or "dir"."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = "dir"
            else:
                with open(path, "rb") as handle:
                    found[key] = handle.read()
    return found


def _base_state(model) -> tuple:
    return ({name: type(module).__name__ for name, module in model.named_modules()},
            {key: value.clone() for key, value in model.state_dict().items()})


def _assert_unchanged(model, state) -> None:
    modules, tensors = _base_state(model)
    assert modules == state[0]  # no GRADIEND layer left in the base model
    assert tensors.keys() == state[1].keys() and all(torch.equal(tensors[k], state[1][k]) for k in tensors)


def _journals(folder) -> list:
    return sorted(name for name in os.listdir(folder) if name.startswith(".gradiend"))


# ------------------------------------------------------------------------------------------- a real kill
def test_a_kill_between_the_moves_of_a_pair_save_is_refused_by_loads_until_a_save_or_the_owner_finishes_it(tmp_path):
    folder = tmp_path / "pairs"
    save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    assert _which_save(load_pair_adapters(tiny_llama(), str(folder))[0]) == 1.0
    log = tmp_path / "child.log"
    child = subprocess.Popen(
        [sys.executable, "-c", SAVE.format(here=HERE) + textwrap.dedent("""
            import gradiend_peft.atomic.commit as commit
            move = commit._move
            def first_move_then_wait(name, source, target):
                move(name, source, target)
                print("moved", flush=True)
                time.sleep(600)
            commit._move = first_move_then_wait
            save_pair_adapters(marked(2), %r, FEATURE, ADAPTERS)
        """ % str(folder))],
        env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        lines = iter(child.stdout.readline, "")  # until "moved", or the end of the child's output
        assert any(line.strip() == "moved" for line in lines), log.read_text()[-3000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [name for name in _journals(folder) if name.startswith(".gradiend-commit-")]  # one journal, in the root
    with open(folder / "A-vs-B" / "adapter_config.json") as handle:  # the commit moves the configs first
        assert json.load(handle)["lr"] == 2.0
    assert set(load_file(folder / "A-vs-B" / "adapter_model.safetensors")["base_model.gradiend_encoder_bias"].tolist()) == {1.0}

    before, base = _tree(folder), tiny_llama()
    state = _base_state(base)
    with pytest.raises(UntrustedAdapterError, match="a save into this folder was interrupted(.|\n)*"
                                                    "finish_interrupted_pair_save"):
        load_pair_adapters(base, str(folder))
    with pytest.raises(UntrustedAdapterError, match="two saves"):  # the pair's own folder: the weights digest
        load_gradiend_model(tiny_llama(), str(folder / "A-vs-B"))
    assert _tree(folder) == before  # loads are read-only
    _assert_unchanged(base, state)

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, symlinks=True)
    finish_interrupted_pair_save(str(folder))  # the owner's explicit call
    assert _journals(folder) == []
    assert _which_save(load_pair_adapters(tiny_llama(), str(folder))[0]) == 2.0
    # the next save finishes it before its own commit: the pairs it does not write come from the interrupted save
    save_pair_adapters(marked(3), str(copy), FEATURE, {("A", "B"): "A-vs-B"})
    assert _journals(copy) == []
    assert _which_save(load_pair_adapters(tiny_llama(), str(copy))[0], ["A-vs-B"]) == 3.0
    for name in ("A-vs-C", "B-vs-C"):
        assert _which_save(load_gradiend_model(tiny_llama(), str(copy / name), adapter_name=name), [name]) == 2.0


# ------------------------------------------------------------------------------------------ crafted journals
def _crafted(tmp_path, attack):
    """A saved pair folder with a crafted interrupted commit, beside a home folder that nothing may touch."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "id_rsa").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (home / "adapter_model.safetensors").write_bytes(b"someone else's weights\n")
    (home / "adapter_config.json").write_bytes(b"{}\n")
    folder = tmp_path / "pairs"
    save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    (folder / "A-vs-B" / "notes.txt").write_bytes(b"the user's notes\n")
    where = folder / "A-vs-B" if attack == "a journal in a pair's folder" else folder
    staging = where / ".gradiend-staging-evil"
    staging.mkdir()
    files, remove = [], []
    if attack == "writes through a linked pair folder":
        os.symlink(home, folder / "link")
        (staging / "link").mkdir()
        (staging / "link" / "adapter_config.json").write_bytes(b'{"peft_type": "GRADIEND"}\n')
        files = ["link/adapter_config.json"]
    elif attack == "deletes through a linked pair folder":
        os.symlink(home, folder / "link")
        remove = ["link/adapter_model.safetensors"]
    elif attack == "a staged pair folder that is a link":
        os.symlink(home, staging / "A-vs-B")
        files = ["A-vs-B/adapter_model.safetensors", "A-vs-B/adapter_config.json"]
    elif attack == "a file two folders down":
        (staging / "A-vs-B" / "x").mkdir(parents=True)
        (staging / "A-vs-B" / "x" / "adapter_config.json").write_bytes(b"{}\n")
        files = ["A-vs-B/x/adapter_config.json"]
    elif attack == "deletes a file of the user's":
        remove = ["A-vs-B/notes.txt"]
    else:  # "a journal in a pair's folder": one of a single adapter's saves, deleting the user's notes
        remove = ["notes.txt"]
    (where / f".gradiend-commit-{staging.name}.json").write_text(
        json.dumps({"staging": staging.name, "files": files, "remove": remove}))
    return folder, home


ATTACKS = ["writes through a linked pair folder", "deletes through a linked pair folder",
           "a staged pair folder that is a link", "a file two folders down", "deletes a file of the user's",
           "a journal in a pair's folder"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_pair_folder_holding_a_crafted_journal_is_refused_by_loads_and_saves_and_nothing_changes(tmp_path, attack):
    folder, home = _crafted(tmp_path, attack)
    inside, outside = _tree(folder), _tree(home)
    base = tiny_llama()
    state = _base_state(base)
    with pytest.raises(UntrustedAdapterError, match="a save into this folder was interrupted"):
        load_pair_adapters(base, str(folder))
    _assert_unchanged(base, state)
    assert _tree(folder) == inside and _tree(home) == outside
    with pytest.raises(UntrustedAdapterError, match="gradiend_peft never writes a journal like that"):
        save_pair_adapters(marked(2), str(folder), FEATURE, ADAPTERS)
    assert _tree(folder) == inside and _tree(home) == outside  # the save's own staging is gone too
    if attack != "a journal in a pair's folder":
        with pytest.raises(UntrustedAdapterError, match="never writes a journal like that"):
            finish_interrupted_pair_save(str(folder))
        assert _tree(folder) == inside and _tree(home) == outside


# ----------------------------------------------------------------------------------------------- the rest
def test_a_refused_later_pair_leaves_the_base_model_as_it_was(tmp_path):
    folder = tmp_path / "pairs"
    save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    weights = folder / "B-vs-C" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.gradiend_encoder_bias"] = torch.full_like(tensors["base_model.gradiend_encoder_bias"], float("nan"))
    save_file(tensors, weights)  # headers as before: only reading the values finds it, after two pairs are loaded
    base = tiny_llama()
    state = _base_state(base)
    with pytest.raises(UntrustedAdapterError, match="B-vs-C"):
        load_pair_adapters(base, str(folder))
    _assert_unchanged(base, state)
    model, index = load_pair_adapters(base, str(folder), pairs=[("A", "B"), ("A", "C")])  # the base is usable again
    assert _which_save(model, ["A-vs-B", "A-vs-C"]) == 1.0 and list(index.adapters.values()) == ["A-vs-B", "A-vs-C"]


def test_a_pair_save_finishes_an_interrupted_save_into_a_pair_s_folder_first(tmp_path):
    folder = tmp_path / "pairs"
    save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    pair = folder / "A-vs-B"  # a save_adapter into the pair's folder, killed after it moved the config
    (pair / ".gradiend-staging-cut").mkdir()
    shutil.copy(pair / "adapter_model.safetensors", pair / ".gradiend-staging-cut" / "adapter_model.safetensors")
    (pair / ".gradiend-commit-.gradiend-staging-cut.json").write_text(json.dumps(
        {"staging": ".gradiend-staging-cut", "files": ["adapter_config.json", "adapter_model.safetensors"]}))
    with pytest.raises(UntrustedAdapterError, match="a save into this folder was interrupted"):
        load_pair_adapters(tiny_llama(), str(folder))
    save_pair_adapters(marked(2), str(folder), FEATURE, ADAPTERS)
    assert _journals(pair) == [] and _journals(folder) == []
    assert _which_save(load_pair_adapters(tiny_llama(), str(folder))[0]) == 2.0


def test_a_pair_folder_that_is_a_link_is_refused_by_the_save_before_anything_is_written(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    folder = tmp_path / "pairs"
    folder.mkdir()
    os.symlink(home, folder / "A-vs-C")
    with pytest.raises(FileExistsError, match="A-vs-C' is a link or a file"):
        save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    assert os.listdir(home) == [] and sorted(os.listdir(folder)) == ["A-vs-C"]


def test_a_save_replaces_a_pair_s_previous_sharded_weights_in_the_same_commit(tmp_path):
    folder = tmp_path / "pairs"
    save_pair_adapters(marked(1), str(folder), FEATURE, ADAPTERS)
    pair = folder / "A-vs-C"
    tensors = load_file(pair / "adapter_model.safetensors")
    names = sorted(tensors)
    shards = {"adapter_model-00001-of-00002.safetensors": names[::2], "adapter_model-00002-of-00002.safetensors": names[1::2]}
    for file, held in shards.items():
        save_file({name: tensors[name] for name in held}, pair / file)
    (pair / "adapter_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {name: file for file, held in shards.items() for name in held}}))
    (pair / "adapter_model.safetensors").unlink()
    (pair / "adapter_model-00003-of-00003.safetensors").write_bytes(b"a user's file merely named like a shard")
    sharded = load_gradiend_model(tiny_llama(), str(pair), adapter_name="A-vs-C")  # a loadable sharded adapter
    assert _which_save(sharded, ["A-vs-C"]) == 1.0
    save_pair_adapters(marked(2), str(folder), FEATURE, ADAPTERS)
    assert sorted(os.listdir(pair)) == ["README.md", "adapter_config.json", "adapter_model-00003-of-00003.safetensors",
                                        "adapter_model.safetensors"]
    assert _which_save(load_pair_adapters(tiny_llama(), str(folder))[0]) == 2.0
