"""Shared helpers of the evaluation package: inputs to plain rows, the model's parts, batching."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..data.feature import MASK_PLACEHOLDER

__all__ = ["as_rows", "as_texts", "model_parts", "batches", "eval_mode"]


def as_rows(rows: Any, what: str = "rows", *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Mined rows (a `datasets.Dataset`, a list of dicts) as a list of plain dicts."""
    if rows is None:
        raise TypeError(f"{what} must be a datasets.Dataset or a list of dicts, got None.")
    if isinstance(getattr(rows, "column_names", None), Mapping):
        raise TypeError(f"{what} is a DatasetDict with splits {list(rows.keys())}; pass one split, e.g. pairs['test'].")
    if isinstance(rows, Mapping):
        raise TypeError(f"{what} must be a sequence of rows (dicts), not a single dict.")
    result = [dict(row) for row in rows]
    if not result and not allow_empty:
        raise ValueError(f"{what} is empty; give at least one row.")
    for i, row in enumerate(result):
        text = row.get("text")
        if not isinstance(text, str) or text.count(MASK_PLACEHOLDER) != 1:
            raise ValueError(f"{what}[{i}] needs a 'text' with exactly one {MASK_PLACEHOLDER!r} slot, got {text!r}.")
        if not isinstance(row.get("factual"), str) or not row["factual"].strip():
            raise ValueError(f"{what}[{i}] needs a non-empty 'factual' word, got {row.get('factual')!r}.")
    return result


def as_texts(texts: Any, what: str = "neutral") -> list[str]:
    """Neutral text (a `datasets.Dataset` with ``text``, a list of strings or of dicts with ``text``) as strings."""
    if texts is None:
        raise TypeError(f"{what} must be a list of texts or a datasets.Dataset with a 'text' column, got None.")
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of texts, not the string {texts[:40]!r}.")
    if hasattr(texts, "column_names"):
        if "text" not in texts.column_names:
            raise ValueError(f"{what} has no 'text' column (columns: {texts.column_names}).")
        result = list(texts["text"])
    else:
        result = [t["text"] if isinstance(t, Mapping) else t for t in texts]
    bad = [i for i, t in enumerate(result) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what}[{bad[0]}] is not a string: {result[bad[0]]!r}.")
    result = [t for t in result if t.strip()]
    if not result:
        raise ValueError(f"{what} holds no non-empty text.")
    return result


def model_parts(model: nn.Module, adapter_name: Optional[str] = None) -> tuple[Any, str, Any]:
    """``(tuner, adapter_name, config)`` of a `peft.PeftModel` around GRADIEND or of the tuner itself."""
    from ..tuner.model import tuner_of

    tuner = tuner_of(model)
    name = tuner.resolve_adapter(adapter_name)
    return tuner, name, tuner.peft_config[name]


def model_device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}.")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def length_batches(lengths: Sequence[int], size: int, slack: float = 1.5) -> list[list[int]]:
    """Indices into ``lengths`` in batches of similar length: sorted by length, at most ``size`` per batch, and a
    new batch wherever a length exceeds ``slack`` times the batch's shortest, so that no row is padded beyond
    ``slack`` times its length (rows of very different lengths no longer all pad to the longest)."""
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}.")
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        if not out or len(out[-1]) >= size or lengths[i] > slack * max(lengths[out[-1][0]], 1):
            out.append([])
        out[-1].append(i)
    return out


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the duration; training flags restored after."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag
