"""Encoder evaluation: how well the learned latent separates the feature's classes on held-out rows."""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_json
from ..data.collators import collator_for
from ..data.feature import MASK_PLACEHOLDER
from ..atomic import json_safe
from ._common import as_rows, as_texts, batches, model_device, model_parts
from ..objective.encoding import encode_rows
from ..objective.metrics import expected_sign, pearson, sign_accuracy

__all__ = ["EncoderReport", "GroupStats", "evaluate_encoder", "neutral_slot_rows"]

logger = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class GroupStats:
    """Statistics of the encodings ``h_i`` of one group of rows: ``count``, ``mean``, ``std`` (population:
    ``sqrt(mean (h - mean)^2)``), ``min``, quartiles ``q25``/``median``/``q75`` (linear interpolation) and ``max``;
    ``expected_sign`` for a class (the sign its rows should encode to), ``class_name`` for a target word."""

    count: int
    mean: float
    std: float
    min: float
    q25: float
    median: float
    q75: float
    max: float
    expected_sign: Optional[float] = None
    class_name: Optional[str] = None

    @classmethod
    def of(cls, values: Sequence[float], **extra: Any) -> "GroupStats":
        x = torch.tensor(list(values), dtype=torch.float64)
        if x.numel() == 0:
            raise ValueError("GroupStats needs at least one value.")
        q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        return cls(count=x.numel(), mean=float(x.mean()), std=float(x.std(unbiased=False)), min=float(x.min()),
                   q25=q[0], median=q[1], q75=q[2], max=float(x.max()), **extra)


@dataclass(frozen=True)
class EncoderReport:
    """What the encoder does on held-out rows.

    With ``h_i`` the encoding of row ``i`` (latent dimension ``dim``) and ``t_i`` its expected sign
    (`gradiend_peft.objective.expected_sign`):

    - ``correlation = pearson(h, t)`` over the class rows (NaN when either is constant);
    - ``accuracy = mean_i [sign(h_i) = t_i]`` (``h_i = 0`` counts as wrong);
    - ``classes``: `GroupStats` per ``factual_class``; ``words``: per target word (``factual`` lower-cased);
    - ``neutral``: `GroupStats` of the neutral rows' encodings (``neutral_method`` says how they were made), and
      ``neutral_mean_abs = mean |h|`` over them.

    ``rows`` and ``neutral_rows`` keep every row's ``text``, ``factual``, ``factual_class``, ``expected`` and
    ``encoding``.
    """

    correlation: float
    accuracy: float
    n_rows: int
    classes: dict[str, GroupStats]
    words: dict[str, GroupStats]
    rows: tuple[dict[str, Any], ...]
    source: str
    dim: int = 0
    neutral: Optional[GroupStats] = None
    neutral_mean_abs: Optional[float] = None
    neutral_rows: tuple[dict[str, Any], ...] = ()
    neutral_method: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EncoderReport":
        """The inverse of `to_dict` (``None`` statistics stay ``None``)."""
        data = dict(data)
        data["classes"] = {k: GroupStats(**v) for k, v in data["classes"].items()}
        data["words"] = {k: GroupStats(**v) for k, v in data["words"].items()}
        data["neutral"] = GroupStats(**data["neutral"]) if data.get("neutral") else None
        data["rows"] = tuple(data["rows"])
        data["neutral_rows"] = tuple(data.get("neutral_rows") or ())
        return cls(**data)

    def to_table(self):
        """Every row (class rows, then neutral rows with ``factual_class`` ``None``) as a `datasets.Dataset`."""
        import datasets

        return datasets.Dataset.from_list([dict(r) for r in self.rows + self.neutral_rows])

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically (a temporary file moved into place); returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def summary(self) -> str:
        """A small plain-text table for logs and terminals."""
        lines = [f"encoder: r = {self.correlation:+.3f}, accuracy = {self.accuracy:.3f} over {self.n_rows} rows",
                 f"{'group':<16}{'n':>6}{'expect':>8}{'mean':>9}{'std':>8}{'median':>9}"]
        groups = [(f"class {k}", v) for k, v in self.classes.items()] + [(f"word {k}", v) for k, v in self.words.items()]
        if self.neutral is not None:
            groups.append(("neutral", self.neutral))
        for label, s in groups:
            sign = "" if s.expected_sign is None else f"{s.expected_sign:+.0f}"
            lines.append(f"{label[:16]:<16}{s.count:>6}{sign:>8}{s.mean:>+9.3f}{s.std:>8.3f}{s.median:>+9.3f}")
        return "\n".join(lines)


def neutral_slot_rows(texts: Sequence[str], tokenizer: Any, objective: str, *, seed: int = 0) -> list[dict[str, Any]]:
    """Neutral rows: in each text one word, drawn with ``random.Random(seed)`` among the words after the first, becomes
    the slot, and ``factual = alternative =`` that word, ``label = 0``. Words the collator cannot use (a causal LM needs
    a single-token target) are passed over; a text with no usable word is skipped.

    The encoder then reads the source gradient of predicting an ordinary word. For ``source="diff"`` the factual and
    alternative gradients are equal, so ``g_diff = 0`` and every neutral row encodes to ``act(b_e)`` exactly.
    """
    collator = collator_for(tokenizer, objective)
    rng = random.Random(seed)
    rows = []
    for text in texts:
        if MASK_PLACEHOLDER in text:
            continue
        matches = list(_WORD.finditer(text))[1:]
        rng.shuffle(matches)
        for match in matches:
            row = {"text": text[: match.start()] + MASK_PLACEHOLDER + text[match.end() :], "factual": match.group(0),
                   "alternative": match.group(0), "factual_class": None, "label": 0.0}
            try:
                collator.encode(row)
            except ValueError:
                continue
            rows.append(row)
            break
    if not rows:
        raise ValueError("No neutral text has a word that can be masked (texts of one word only?).")
    return rows


def _encode_all(tuner, name: str, rows: list[dict[str, Any]], collator, batch_size: int, dim: int,
                desc: str, progress: Optional[bool]) -> list[float]:
    device = model_device(tuner.model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["text"]))
    values = [0.0] * len(rows)
    chunks = list(batches(order, batch_size))
    for chunk in tqdm(chunks, desc=desc, unit="batch", disable=None if progress is None else not progress):
        batch = collator([rows[i] for i in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        encodings = encode_rows(tuner, batch, name)[:, dim].double().cpu().tolist()
        for i, value in zip(chunk, encodings):
            values[i] = value
    return values


def evaluate_encoder(
    model: nn.Module,
    rows: Any,
    *,
    tokenizer: Any,
    neutral: Any = None,
    batch_size: int = 16,
    adapter_name: Optional[str] = None,
    dim: int = 0,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> EncoderReport:
    """Encodes every row on its own (one backward pass per batch, `gradiend_peft.objective.encode_rows`) and reports how the
    encodings separate the classes (see `EncoderReport` for the maths).

    Args:
        model (`peft.PeftModel` or `GradiendModel`): the GRADIEND model.
        rows (`datasets.Dataset` or `list[dict]`): mined rows (``text``, ``factual``, ``alternative``,
            ``factual_class``, ``alternative_class``, ``label``), e.g. ``pairs["test"]``.
        tokenizer: the base model's tokenizer.
        neutral (*optional*): neutral texts (a list or a `datasets.Dataset` with ``text``), turned into neutral rows
            by `neutral_slot_rows`; or ready rows whose ``text`` has a ``[MASK]`` slot (used as given, label 0).
        batch_size (`int`): rows per backward pass.
        adapter_name (`str`, *optional*): the adapter to evaluate (default: the active one).
        dim (`int`): the latent dimension reported (``latent_dim > 1``).
        seed (`int`): seeds the choice of the neutral rows' slots.
        progress (`bool`, *optional*): show progress bars (default: tqdm decides).
    """
    tuner, name, config = model_parts(model, adapter_name)
    if not 0 <= dim < config.latent_dim:
        raise ValueError(f"dim={dim} is out of range for latent_dim={config.latent_dim}.")
    rows = as_rows(rows)
    expected = [expected_sign(row, config.source, config.class_signs) for row in rows]
    neutral_among = [i for i, t in enumerate(expected) if t == 0.0]
    if neutral_among:
        raise ValueError(f"rows[{neutral_among[0]}] has no class of the adapter and label 0; pass neutral rows as "
                         "neutral=..., class rows as rows.")
    collator = collator_for(tokenizer, config.objective)
    values = _encode_all(tuner, name, rows, collator, batch_size, dim, "encoding rows", progress)
    records = tuple(
        {"text": r["text"], "factual": r["factual"], "factual_class": r.get("factual_class"), "expected": t,
         "encoding": h}
        for r, t, h in zip(rows, expected, values)
    )
    classes: dict[str, list[int]] = {}
    words: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        classes.setdefault(str(row.get("factual_class")), []).append(i)
        words.setdefault(row["factual"].lower(), []).append(i)
    class_stats = {c: GroupStats.of([values[i] for i in idx], expected_sign=expected[idx[0]]) for c, idx in classes.items()}
    word_stats = {w: GroupStats.of([values[i] for i in idx], class_name=str(rows[idx[0]].get("factual_class")))
                  for w, idx in sorted(words.items())}
    report = dict(
        correlation=pearson(values, expected),
        accuracy=sign_accuracy(values, expected), n_rows=len(rows), classes=class_stats, words=word_stats,
        rows=records, source=config.source, dim=dim,
    )
    if neutral is not None:
        items = list(neutral) if not hasattr(neutral, "column_names") else neutral
        if items and isinstance(items[0], Mapping) and MASK_PLACEHOLDER in str(items[0].get("text", "")):
            neutral_rows = [dict(r, alternative=r.get("alternative", r["factual"]), label=0.0) for r in as_rows(items, "neutral")]
            method = "given rows with a [MASK] slot, label 0"
        else:
            neutral_rows = neutral_slot_rows(as_texts(neutral), tokenizer, config.objective, seed=seed)
            method = f"one random word per neutral text masked (seed {seed}), factual = alternative = that word"
        neutral_values = _encode_all(tuner, name, neutral_rows, collator, batch_size, dim, "encoding neutral", progress)
        report.update(
            neutral=GroupStats.of(neutral_values), neutral_mean_abs=float(torch.tensor(neutral_values).abs().mean()),
            neutral_rows=tuple({"text": r["text"], "factual": r["factual"], "factual_class": None, "expected": 0.0,
                                "encoding": h} for r, h in zip(neutral_rows, neutral_values)),
            neutral_method=method,
        )
    result = EncoderReport(**report)
    logger.info("encoder evaluation: r=%.3f accuracy=%.3f on %d rows", result.correlation, result.accuracy, result.n_rows)
    return result
