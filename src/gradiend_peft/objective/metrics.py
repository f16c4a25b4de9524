"""Encoder metrics, one implementation for training and evaluation: the expected sign of a row, Pearson correlation,
sign accuracy, and the class statistics of row encodings.

A row's *expected sign* is the sign its source gradient should encode to: ``class_signs[C]`` for the class ``C`` of
the source token (the factual class for a ``factual`` or ``diff`` source, the alternative's class for an
``alternative`` source). Without class signs, or for a class the adapter does not know, the mined label stands in:
``+label`` for ``factual``/``diff``, ``-label`` for ``alternative`` (the reference implementation's convention).
Neutral rows (label 0, no class) expect 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

__all__ = ["SIGNED_METRICS", "encoding_metrics", "expected_sign", "pearson", "sign_accuracy"]

SIGNED_METRICS = ("correlation",)
"""Metrics that change sign when the encoder is negated (besides the class means ``mean_<class>``)."""


def expected_sign(row: Mapping[str, Any], source: str, class_signs: Optional[Mapping[str, float]] = None) -> float:
    """The sign a row (``factual_class``, ``alternative_class``, ``label``) should encode to (see the module
    docstring); ``0.0`` for a neutral row (label 0 and no known class).

    Raises:
        `ValueError`: for a row with neither a known class nor a label.
    """
    key = "alternative_class" if source == "alternative" else "factual_class"
    cls = row.get(key)
    if class_signs and cls in class_signs:
        return float(class_signs[cls])
    label = row.get("label")
    if label is None:
        raise ValueError(f"Row {row.get('text')!r} has neither a class of the adapter ({key}={cls!r}) nor a label.")
    return float(math.copysign(1.0, float(label))) * (-1.0 if source == "alternative" else 1.0) if label else 0.0


def pearson(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Pearson's ``r = sum (x - mx)(y - my) / sqrt(sum (x - mx)^2 sum (y - my)^2)`` in float64.

    NaN when it is undefined: fewer than two values, or either sequence constant.

    Raises:
        `ValueError`: for sequences of different lengths.
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"pearson needs two sequences of equal length, got {x.numel()} and {y.numel()}.")
    if x.numel() < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0.0 or not math.isfinite(denominator):
        return math.nan
    return float((dx * dy).sum()) / denominator


def sign_accuracy(values: Sequence[float] | torch.Tensor, expected: Sequence[float] | torch.Tensor) -> float:
    """The share of ``values`` whose sign equals the sign of ``expected`` (a value of exactly 0 is never right); NaN
    for no values."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    expected = torch.as_tensor(expected, dtype=torch.float64).reshape(-1)
    if values.numel() != expected.numel():
        raise ValueError("sign_accuracy needs two sequences of equal length.")
    if values.numel() == 0:
        return math.nan
    return float((torch.sign(values) == torch.sign(expected)).double().mean())


def encoding_metrics(
    encodings: Sequence[float] | torch.Tensor,
    expected: Sequence[float] | torch.Tensor,
    class_names: Optional[Mapping[float, str]] = None,
) -> dict[str, float]:
    """Metrics of row encodings against expected signs.

    Args:
        encodings (`torch.Tensor`): ``(N,)`` encodings (one latent dimension).
        expected (`torch.Tensor`): ``(N,)`` expected signs in ``{-1, 0, +1}`` (0: neutral row).
        class_names (`Mapping[float, str]`, *optional*): The class that encodes to ``+1.0`` and to ``-1.0``;
            default ``positive`` / ``negative``.

    Returns:
        `dict[str, float]`: ``correlation`` (Pearson r of encodings and expected signs over all rows, neutral rows
        at 0; NaN when undefined), ``abs_correlation``, ``accuracy`` (share of non-neutral rows encoded with the
        expected sign), ``mean_<class>`` / ``std_<class>`` (population std over the rows expected to encode to that
        class's sign), ``mean_neutral`` when neutral rows exist, and ``rows``.
    """
    encodings = torch.as_tensor(encodings, dtype=torch.float64).flatten()
    expected = torch.as_tensor(expected, dtype=torch.float64).flatten()
    names = dict(class_names or {1.0: "positive", -1.0: "negative"})
    correlation = pearson(encodings, expected)
    signed = expected != 0
    metrics = {
        "correlation": correlation,
        "abs_correlation": abs(correlation),
        "accuracy": sign_accuracy(encodings[signed], expected[signed]),
    }
    for sign, name in names.items():
        rows = encodings[expected == sign]
        metrics[f"mean_{name}"] = float(rows.mean()) if rows.numel() else math.nan
        metrics[f"std_{name}"] = float(rows.std(unbiased=False)) if rows.numel() else math.nan
    if (expected == 0).any():
        metrics["mean_neutral"] = float(encodings[expected == 0].mean())
    metrics["rows"] = float(encodings.numel())
    return metrics
