"""The language-modelling score (LMS) of GRADIEND's rewrite search, as an `evaluate` metric.

Configurations:

- ``causal_lm`` (default): ``predictions`` are per-token negative log-likelihoods ``-log p(x_t | x_<t)`` (nats);
  returns ``lms = 1 / (1 + mean NLL)``, ``mean_nll`` and ``perplexity = exp(mean NLL)``.
- ``masked_lm``: ``predictions`` are the argmax token ids at masked positions and ``references`` the original ids;
  returns ``lms`` = their accuracy.

``gradiend_peft.evaluation.lms_token_scores`` gives the per-token values of a model on prepared neutral text.
Self-contained (torch only) so that ``evaluate.load(<path of this file>)`` works offline.
"""

import math

import datasets
import evaluate
import torch

_DESCRIPTION = "LMS: masked LM, accuracy on masked tokens; causal LM, 1 / (1 + mean next-token NLL)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: causal_lm, per-token negative log-likelihoods (`list[float]`); masked_lm, predicted ids (`list[int]`).
    references: masked_lm only, the original token ids (`list[int]`).
Returns:
    lms (`float`), count (`int`); causal_lm also mean_nll and perplexity.
Examples:
    >>> metric = evaluate.load(gradiend_peft.evaluation.metric_path("language_modeling_score"), "causal_lm")
    >>> metric.compute(predictions=[1.0, 3.0])["lms"]
    0.3333333333333333
"""


class LanguageModelingScore(evaluate.Metric):
    def _info(self):
        if self.config_name == "masked_lm":
            features = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
        elif self.config_name in ("causal_lm", "default"):
            features = datasets.Features({"predictions": datasets.Value("float64")})
        else:
            raise KeyError(f"Unknown configuration {self.config_name!r}; use 'causal_lm' or 'masked_lm'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Drechsel and Herbold, GRADIEND, arXiv:2502.01406",
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references=None):
        if self.config_name == "masked_lm":
            pred = torch.tensor(predictions, dtype=torch.long)
            ref = torch.tensor(references, dtype=torch.long)
            return {"lms": float((pred == ref).double().mean()), "count": len(pred)}
        nll = float(torch.tensor(predictions, dtype=torch.float64).mean())
        return {"lms": 1.0 / (1.0 + nll), "mean_nll": nll, "perplexity": math.exp(nll) if nll < 700 else math.inf,
                "count": len(predictions)}
