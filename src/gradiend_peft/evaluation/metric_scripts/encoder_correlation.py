"""GRADIEND encoder correlation: Pearson's r and the sign accuracy of encodings against their expected signs.

Self-contained (torch only) so that it can be loaded with ``evaluate.load(<path of this file>)`` offline, combined
with ``evaluate.combine`` and pushed to the Hub.
"""

import math

import datasets
import evaluate
import torch

_DESCRIPTION = """Pearson's r = sum (x - mx)(y - my) / sqrt(sum (x - mx)^2 sum (y - my)^2) between the encodings
(predictions) and the expected signs or labels (references), NaN when either is constant; accuracy = the share of
predictions whose sign equals the reference's sign (a prediction of exactly 0 is never right)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): the encodings h_i.
    references (`list[float]`): the expected signs (+1 / -1) or labels.
Returns:
    pearsonr (`float`), accuracy (`float`), count (`int`).
Examples:
    >>> metric = evaluate.load(gradiend_peft.evaluation.metric_path("encoder_correlation"))
    >>> metric.compute(predictions=[0.9, -0.8, 0.1], references=[1, -1, -1])["accuracy"]
    0.6666666666666666
"""


class EncoderCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Drechsel and Herbold, GRADIEND, arXiv:2502.01406",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        x = torch.tensor(predictions, dtype=torch.float64)
        y = torch.tensor(references, dtype=torch.float64)
        dx, dy = x - x.mean(), y - y.mean()
        denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
        r = float((dx * dy).sum()) / denominator if denominator > 0 else float("nan")
        accuracy = float((torch.sign(x) == torch.sign(y)).double().mean()) if len(x) else float("nan")
        return {"pearsonr": r, "accuracy": accuracy, "count": len(x)}
