"""Sharing GRADIEND adapters through a Hub-protocol server on 127.0.0.1 (the client runs in a subprocess, since
huggingface_hub reads HF_ENDPOINT at import time)."""

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
assert torch.equal(logits(loaded), logits(model))
print("ROUND_TRIP_OK")
"""


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


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
