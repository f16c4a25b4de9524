"""Sharing GRADIEND adapters through a Hub-protocol server on 127.0.0.1 (the client runs in a subprocess, since
huggingface_hub reads HF_ENDPOINT at import time)."""

import json

import pytest

from hub_server import HubServer, run_with_hub

SETUP = """
import json, sys, torch
import gradiend_peft
from peft import PeftModel, get_peft_model
from tiny import tiny_gpt2
from batches import causal_lm_batch

def build():
    return get_peft_model(tiny_gpt2(), gradiend_peft.GradiendConfig(init_seed=0, include_embeddings=True, feature_classes=["M", "F"]))

def logits(model):
    batch = causal_lm_batch()
    with torch.no_grad(), model.base_model.steer(feature_factor=1.0, lr=10.0):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

def adapter_state(model):
    return {k: v for k, v in model.state_dict().items() if "gradiend" in k}
"""

CHECK = """
model = build()
loaded = {loader}
assert adapter_state(loaded).keys() == adapter_state(model).keys()
assert all(torch.equal(adapter_state(loaded)[k], v) for k, v in adapter_state(model).items())
assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())  # the base model too
ours, theirs = logits(loaded), logits(model)
# on a difference, say how large, and whether the same model gives the same logits twice (a kernel that is not
# deterministic) or the two models differ
assert torch.equal(ours, theirs), (float((ours - theirs).abs().max()), int((ours != theirs).sum()),
                                   torch.equal(logits(model), theirs), torch.get_num_threads())
print("ROUND_TRIP_OK")
"""


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server
        assert server.errors == [], "\n".join(server.errors)
        assert server.unhandled == [], server.unhandled  # the fake answered every request these tests made


def test_push_adapter_to_hub_and_load_back(hub):
    push = run_with_hub(SETUP + """
model = build()
model.peft_config["default"].base_model_name_or_path = "test-user/tiny-gpt2"
print(gradiend_peft.push_adapter_to_hub(model, "test-user/gradiend-gender"))
""", hub, check=True)
    files = hub.repo_files("test-user/gradiend-gender")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "library_name: peft" in card and "base_model: test-user/tiny-gpt2" in card
    assert "class `M` encodes to +1" in card and "class `F` encodes to -1" in card
    load = run_with_hub(SETUP + CHECK.format(loader='gradiend_peft.load_gradiend_model(tiny_gpt2(), "test-user/gradiend-gender")'), hub, check=True)
    assert "ROUND_TRIP_OK" in load.stdout, push.stdout


def test_peft_push_to_hub_and_peft_from_pretrained(hub):
    run_with_hub(SETUP + """
model = build()
model.push_to_hub("test-user/gradiend-peft-verb")
""", hub, check=True)
    files = hub.repo_files("test-user/gradiend-peft-verb")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    load = run_with_hub(SETUP + CHECK.format(loader='PeftModel.from_pretrained(tiny_gpt2(), "test-user/gradiend-peft-verb")'), hub, check=True)
    assert "ROUND_TRIP_OK" in load.stdout


def test_peft_push_to_hub_keeps_a_gradiend_card_and_cannot_write_one_on_a_new_repository(hub):
    """transformers' push_to_hub writes the card it loads from the repository, or its generic one on a new repository,
    after peft's save: there is no hook for GRADIEND's card. push_adapter_to_hub writes it; a later push_to_hub
    keeps it."""
    run_with_hub(SETUP + """
model = build()
model.push_to_hub("test-user/new-repo")
gradiend_peft.push_adapter_to_hub(model, "test-user/carded")
model.base_model.gradiend_gradient_scale["default"].fill_(2.0)  # a changed adapter, pushed with peft's verb
model.push_to_hub("test-user/carded")
""", hub, check=True)
    assert "library_name: transformers" in hub.repo_files("test-user/new-repo")["README.md"].decode()
    files = hub.repo_files("test-user/carded")
    card = files["README.md"].decode()
    assert "library_name: peft" in card and "class `M` encodes to +1" in card
    from safetensors.torch import load as load_safetensors

    assert float(load_safetensors(files["adapter_model.safetensors"])["base_model.gradiend_gradient_scale"]) == 2.0
    config = json.loads(files["adapter_config.json"])
    assert config["weights_digest"].startswith("sha256:")


def test_peft_readers_check_a_hub_adapter_too(hub):
    """GRADIEND's hooks run for a Hub repository as for a folder: a crafted repository is refused by both readers."""
    result = run_with_hub(SETUP + """
import json, tempfile, os
from huggingface_hub import HfApi
model = build()
folder = tempfile.mkdtemp()
model.save_pretrained(folder)
raw = json.load(open(os.path.join(folder, "adapter_config.json")))
raw["target_shapes"] = {"../../etc/passwd": [2, 2]}
json.dump(raw, open(os.path.join(folder, "adapter_config.json"), "w"))
HfApi().create_repo("test-user/crafted")
HfApi().upload_folder(repo_id="test-user/crafted", folder_path=folder)
for load in (lambda: PeftModel.from_pretrained(tiny_gpt2(), "test-user/crafted"),
             lambda: gradiend_peft.load_gradiend_model(tiny_gpt2(), "test-user/crafted")):
    try:
        load()
    except gradiend_peft.UntrustedAdapterError as err:
        assert "invalid module name" in str(err), err
        print("REFUSED")
""", hub, check=True)
    assert result.stdout.count("REFUSED") == 2
