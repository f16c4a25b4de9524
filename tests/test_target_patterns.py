"""Module-name patterns that would stall peft's matching: a saved adapter is attached to exactly the modules it
recorded (``target_shapes``, no pattern matched), and a user's regex with catastrophic backtracking is refused.

``"target_modules": "(.*)*X"`` once kept `load_gradiend_model` busy past 90 s. The cases that could hang run in a
subprocess under a wall-clock guard, so that a regression fails instead of stalling the suite."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.tuner.constants import TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING

from tiny import tiny_bert, tiny_llama

TESTS = os.path.dirname(os.path.abspath(__file__))
CRAFTED = "(.*)*X"
GUARD_S = 240  # generous: the subprocess imports torch and transformers on a shared 2-core machine


def _run(code: str, *args: str) -> str:
    """Runs ``code`` in a fresh interpreter (with tests/ importable) under the wall-clock guard; returns stdout."""
    try:
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                             timeout=GUARD_S, env={**os.environ, "PYTHONPATH": TESTS})
    except subprocess.TimeoutExpired:
        pytest.fail(f"still matching module names after {GUARD_S} s")
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


_PROBE = """
    import json, sys, torch
    from peft import PeftModel, get_peft_model
    from gradiend_peft import GradiendConfig, load_gradiend_model
    from tiny import tiny_llama
    folder, pattern = sys.argv[1:]
    model = get_peft_model(tiny_llama(), GradiendConfig(init_seed=0))
    model.save_pretrained(folder)
    path = folder + "/adapter_config.json"
    raw = json.load(open(path))
    raw["target_modules"] = pattern  # the crafted config: its target_shapes are the saved adapter's own
    json.dump(raw, open(path, "w"))
    saved = {k: v for k, v in model.state_dict().items() if "gradiend" in k}
    result = {}
    for loader, load in (("load_gradiend_model", load_gradiend_model), ("PeftModel.from_pretrained",
                                                                          PeftModel.from_pretrained)):
        loaded = load(tiny_llama(), folder)
        state = loaded.state_dict()
        same = sorted(saved) == sorted(k for k in state if "gradiend" in k) and all(
            torch.equal(state[k], v) for k, v in saved.items())
        result[loader] = {"same": same, "modules": sorted(loaded.base_model.gradiend_layers())}
    config = GradiendConfig(init_seed=0)
    config.target_modules = pattern  # set after the config's own check
    try:
        get_peft_model(tiny_llama(), config)
        result["set after"] = "attached"
    except ValueError as err:
        result["set after"] = str(err)
    print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """What loading a saved adapter whose config holds the crafted pattern gives, and what attaching a config
    whose pattern was set after its check gives: one fresh interpreter under the wall-clock guard."""
    folder = tmp_path_factory.mktemp("crafted")
    return json.loads(_run(_PROBE, str(folder), CRAFTED).strip().splitlines()[-1])


@pytest.mark.parametrize("loader", ["load_gradiend_model", "PeftModel.from_pretrained"])
def test_a_saved_adapter_with_a_crafted_pattern_loads_its_recorded_modules(crafted, loader):
    expected = sorted(get_peft_model(tiny_llama(), GradiendConfig()).base_model.gradiend_layers())
    assert crafted[loader] == {"same": True, "modules": expected}


def test_a_crafted_pattern_set_after_the_config_is_refused_before_matching(crafted):
    assert "nested quantifiers" in crafted["set after"] and CRAFTED in crafted["set after"]


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "layers_pattern"])
@pytest.mark.parametrize("pattern, problem", [
    (CRAFTED, "nested quantifiers"),
    (r"(\w+\.)*q_proj", "nested quantifiers"),
    (r"(?:a+){2,}b", "nested quantifiers"),
    (r"(ab|a)*c", "repeated alternation"),
    (r".*.*.*.*X", "4 variable-length repeats"),
])
def test_a_user_pattern_with_catastrophic_backtracking_is_refused(field, pattern, problem):
    kwargs = {field: pattern}
    if field == "layers_pattern":
        kwargs.update(target_modules=["q_proj"], layers_to_transform=[0])
    with pytest.raises(ValueError, match=rf"{field}=.* holds .*{problem}.*list of module names"):
        GradiendConfig(**kwargs)


@pytest.mark.parametrize("pattern", sorted(set(TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING.values())) + [
    r".*layers\.2\d\..*_proj",  # the README's
    r".*\.(0|1)\..*(query|value)",  # what the command line's --layers with --target_modules builds
    r"(?:.*\.)?attention\.self\.(query|key)",
    r"model\.layers\.\d{1,2}\.mlp\.(up|down)_proj",
])
def test_ordinary_patterns_are_accepted(pattern):
    GradiendConfig(target_modules=pattern)


def test_a_recorded_adapter_attaches_exactly_its_modules_whatever_the_pattern_says():
    model = get_peft_model(tiny_bert(), GradiendConfig(target_modules=["query"], init_seed=0))
    config = model.peft_config["default"]
    recorded = sorted(config.target_shapes)
    copied = GradiendConfig(**{**config.to_dict(), "target_modules": ["value", "key"], "peft_type": None})
    other = get_peft_model(tiny_bert(), copied)
    assert sorted(other.base_model.gradiend_layers()) == recorded
