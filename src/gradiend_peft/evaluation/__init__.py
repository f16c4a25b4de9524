"""Evaluation of GRADIEND adapters: the encoder on held-out rows, metrics of a rewritten model, and the search for the
rewrite ``(feature_factor, lr)`` that serves a selection policy.

```python
from gradiend_peft.evaluation import evaluate_encoder, search_rewrite

report = evaluate_encoder(model, pairs["test"], tokenizer=tok, neutral=neutral)
print(report.summary()); report.save_json("out/encoder.json")
result = search_rewrite(model, pairs["test"], neutral, tokenizer=tok, policy="balance", control=control_rows)
debiased = model.merge_and_unload(**result.merge_kwargs())
```

The `evaluate` metrics shipped here load offline: ``evaluate.load(metric_path("encoder_correlation"))``.
"""

import os

from .encoder import EncoderReport, GroupStats, evaluate_encoder, neutral_slot_rows
from .class_pairs import (
    CrossEncodingMatrix,
    DecoderCosineMatrix,
    PairEvaluation,
    cross_encoding_matrix,
    decoder_cosine_matrix,
    evaluate_pairs,
    pair_adapters_of,
)
from .neutralise import NeutralCandidate, NeutralSearchResult, search_neutral_rewrite, select_neutral
from .scoring import (
    LMSInputs,
    LMSResult,
    SlotInputs,
    bias_indices,
    class_words_from_rows,
    filled_row_log_odds,
    language_modeling_score,
    lms_token_scores,
    masked_token_predictions,
    prepare_lms,
    prepare_slots,
    slot_probabilities,
)
from .policies import (
    Balance,
    Candidate,
    CandidateMetrics,
    Debias,
    Favour,
    Policy,
    Strengthen,
    Weaken,
    parse_policy,
    score_candidates,
    select_best,
)
from .result import RewriteResult
from .measure import RewriteInputs, measure_rewrites
from .rewrite import REFERENCE_LEARNING_RATES, refinement_lrs, search_rewrite

METRICS = ("encoder_correlation", "language_modeling_score")
"""The names of the `evaluate` metric scripts shipped with the package."""


def metric_path(name: str) -> str:
    """The local path of a shipped `evaluate` metric script, for ``evaluate.load(metric_path(name))``."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the shipped metrics are {list(METRICS)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "metric_scripts", f"{name}.py")


__all__ = [
    "METRICS",
    "REFERENCE_LEARNING_RATES",
    "Balance",
    "Candidate",
    "CandidateMetrics",
    "CrossEncodingMatrix",
    "DecoderCosineMatrix",
    "Debias",
    "EncoderReport",
    "Favour",
    "GroupStats",
    "LMSInputs",
    "LMSResult",
    "NeutralCandidate",
    "NeutralSearchResult",
    "PairEvaluation",
    "Policy",
    "RewriteInputs",
    "RewriteResult",
    "SlotInputs",
    "Strengthen",
    "Weaken",
    "bias_indices",
    "class_words_from_rows",
    "cross_encoding_matrix",
    "decoder_cosine_matrix",
    "evaluate_encoder",
    "evaluate_pairs",
    "filled_row_log_odds",
    "language_modeling_score",
    "lms_token_scores",
    "masked_token_predictions",
    "measure_rewrites",
    "metric_path",
    "neutral_slot_rows",
    "pair_adapters_of",
    "parse_policy",
    "prepare_lms",
    "prepare_slots",
    "refinement_lrs",
    "score_candidates",
    "search_neutral_rewrite",
    "search_rewrite",
    "select_best",
    "select_neutral",
    "slot_probabilities",
]
