"""Encoder metrics used during training: Pearson correlation, accuracy and class means of the row encodings.

A row's *expected sign* is the sign its source gradient should encode to: ``class_signs[c]`` for the class ``c``
of the source token (the factual class for a ``factual`` or ``diff`` source, the alternative's class for an
``alternative`` source). With mined rows (``label = +1`` for the first class of the pair) that is
``label * class_signs[first class]``, negated for an ``alternative`` source (the reference negates the label there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import torch

SIGNED_METRICS = ("correlation",)
"""Metrics that change sign when the encoder is negated (besides the class means ``mean_<class>``)."""


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors (0.0 when either is constant: the correlation is undefined there)."""
    x = x.double().flatten()
    y = y.double().flatten()
    if x.numel() < 2:
        return 0.0
    xc = x - x.mean()
    yc = y - y.mean()
    denominator = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if denominator == 0.0 or not math.isfinite(denominator):
        return 0.0
    return float((xc * yc).sum()) / denominator


def expected_signs(labels: torch.Tensor, source: str, first_class_sign: float = 1.0) -> torch.Tensor:
    """The expected encoding sign of each row from its ``label`` (see the module docstring); 0 for neutral rows."""
    factor = first_class_sign * (-1.0 if source == "alternative" else 1.0)
    return torch.sign(labels.double()) * factor


def encoding_metrics(
    encodings: torch.Tensor,
    expected: torch.Tensor,
    class_names: Optional[Mapping[float, str]] = None,
) -> dict[str, float]:
    """Metrics of row encodings against expected signs.

    Args:
        encodings (`torch.Tensor`): ``(N,)`` encodings (the first latent dimension).
        expected (`torch.Tensor`): ``(N,)`` expected signs in ``{-1, 0, +1}`` (0: neutral row).
        class_names (`Mapping[float, str]`, *optional*): The class that encodes to ``+1.0`` and to ``-1.0``;
            default ``positive`` / ``negative``.

    Returns:
        `dict[str, float]`: ``correlation`` (Pearson r of encodings and expected signs over all rows, neutral rows
        at 0), ``abs_correlation``, ``accuracy`` (share of non-neutral rows encoded with the expected sign),
        ``mean_<class>`` / ``std_<class>`` (over the rows expected to encode to that class's sign),
        ``mean_neutral`` when neutral rows exist, and ``rows``.
    """
    encodings = encodings.double().flatten()
    expected = expected.double().flatten()
    names = dict(class_names or {1.0: "positive", -1.0: "negative"})
    correlation = pearson(encodings, expected)
    signed = expected != 0
    metrics = {
        "correlation": correlation,
        "abs_correlation": abs(correlation),
        "accuracy": float((torch.sign(encodings[signed]) == expected[signed]).double().mean()) if signed.any() else 0.0,
    }
    for sign, name in names.items():
        rows = encodings[expected == sign]
        metrics[f"mean_{name}"] = float(rows.mean()) if rows.numel() else float("nan")
        metrics[f"std_{name}"] = float(rows.std(unbiased=False)) if rows.numel() else float("nan")
    if (expected == 0).any():
        metrics["mean_neutral"] = float(encodings[expected == 0].mean())
    metrics["rows"] = float(encodings.numel())
    return metrics


def class_mean_keys(class_names: Sequence[str]) -> list[str]:
    return [f"mean_{name}" for name in class_names]
