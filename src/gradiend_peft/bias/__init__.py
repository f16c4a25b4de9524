"""The study of social bias with GRADIEND: gender now (race and religion in the benchmarks). It uses the method
(`gradiend_peft.data`, `gradiend_peft.training`, `gradiend_peft.evaluation`...) and nothing of the method uses it.

- `gradiend_peft.bias.gender`: the he/she data (templates, controls, occupations, training rows).
- `gradiend_peft.bias.benchmarks`: StereoSet, CrowS-Pairs and Wino, with paired statistics of a change.
- `gradiend_peft.bias.debias`: the demo's debiasing steps (search rows, held-out report, benchmark step).
- `gradiend_peft.bias.leace`: the LEACE baseline.

```python
from gradiend_peft.bias import compare_reports, run_bias_benchmarks

before = run_bias_benchmarks(model, tokenizer, domain="gender")
with peft_model.base_model.steer(feature_factor=0.0, lr=100.0):
    after = run_bias_benchmarks(peft_model, tokenizer, domain="gender")
print(compare_reports({"base": before, "edited": after}))
```

The names below load their module on first use, so ``import gradiend_peft.bias`` loads no model code.
"""

from typing import TYPE_CHECKING

_LAZY_NAMES = {
    "BiasBenchmarkReport": "benchmarks",
    "compare_reports": "benchmarks",
    "run_bias_benchmarks": "benchmarks",
    "LeaceBaseline": "leace",
    "context_controls": "gender",
    "neutral_context_rows": "gender",
    "pronoun_classes": "gender",
}
_SUBMODULES = ("benchmarks", "debias", "gender", "leace")

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .benchmarks import BiasBenchmarkReport, compare_reports, run_bias_benchmarks
    from .gender import context_controls, neutral_context_rows, pronoun_classes
    from .leace import LeaceBaseline


def __getattr__(name: str):
    import importlib

    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gradiend_peft.bias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))


__all__ = [
    "BiasBenchmarkReport",
    "LeaceBaseline",
    "compare_reports",
    "context_controls",
    "neutral_context_rows",
    "pronoun_classes",
    "run_bias_benchmarks",
]
