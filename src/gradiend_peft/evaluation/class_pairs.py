"""Evaluating the adapters of a feature's pairs of classes against each other.

With one adapter per pair of classes (`gradiend_peft.training.train_pairs`), two questions go beyond each encoder's
own report:

- **Cross-encoding** (`cross_encoding_matrix`): does the encoder of pair ``i`` separate the rows of pair ``j``? Cell
  ``(i, j)`` is Pearson's ``r`` between pair ``i``'s encodings ``h_i`` of pair ``j``'s held-out rows and the signs
  those rows should encode to under pair ``j``'s own adapter, ``t_j = expected_sign(row, source_j, class_signs_j)``
  (+1 for the source token of ``j``'s first class, -1 for its second); also the sign accuracy and the mean ``h_i``
  per class of ``j``. The diagonal is each encoder's own held-out correlation. Each adapter encodes each distinct row
  (text, factual, alternative) once.
- **Decoder directions** (`decoder_cosine_matrix`): the cosine similarity of the pairs' decoder directions, over all
  target entries in raw-gradient units (`gradiend_peft.editing.decoder_directions`): the decoder bias ``c`` (the edit
  of ``feature_factor=0``) and each decoder weight ``D_j``. The sign of ``D`` follows each pair's orientation (its
  first class encodes to +1); ``c`` has no orientation.

`evaluate_pairs` runs both and every pair's `evaluate_encoder` report, reusing those encodings for the diagonal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ..atomic import atomic_write_json, json_safe
from ..data.class_pairs import pair_label
from ..data.collators import collator_for
from ..editing import decoder_directions
from ..objective.metrics import expected_sign, pearson, sign_accuracy
from ._common import as_rows, model_parts
from .encoder import EncoderReport, _encode_all, evaluate_encoder

__all__ = ["CrossEncodingMatrix", "DecoderCosineMatrix", "PairEvaluation", "cross_encoding_matrix",
           "decoder_cosine_matrix", "evaluate_pairs", "pair_adapters_of"]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def _matrix_text(title: str, labels: Sequence[str], values: Sequence[Sequence[float]], corner: str) -> list[str]:
    width = max(9, *(len(label) + 2 for label in labels))
    lines = [title, f"{corner:<{width}}" + "".join(f"{label:>{width}}" for label in labels)]
    for label, row in zip(labels, values):
        lines.append(f"{label:<{width}}" + "".join(f"{v:>+{width}.3f}" if math.isfinite(v) else f"{'nan':>{width}}"
                                                   for v in row))
    return lines


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class CrossEncodingMatrix:
    """How each pair's encoder scores every pair's held-out rows.

    Cell ``[i][j]`` is encoder ``i`` (``pairs[i]``, adapter ``adapters[i]``) on the rows of ``pairs[j]``:
    ``correlation[i][j] = pearson(h_i, t_j)`` with ``t_j`` the signs the rows encode to under pair ``j``'s adapter
    (NaN when undefined), ``accuracy[i][j] = mean [sign h_i = t_j]``, ``class_means[i][j]`` the mean ``h_i`` over
    the rows of each class of pair ``j`` (by ``factual_class``). ``n_rows[j]``: pair ``j``'s rows; ``dim``: the
    latent dimension.
    """

    pairs: tuple[Pair, ...]
    adapters: tuple[str, ...]
    correlation: tuple[tuple[float, ...], ...]
    accuracy: tuple[tuple[float, ...], ...]
    class_means: tuple[tuple[dict[str, float], ...], ...]
    n_rows: tuple[int, ...]
    dim: int = 0

    @property
    def diagonal(self) -> tuple[float, ...]:
        """Each encoder's correlation on its own pair's rows."""
        return tuple(self.correlation[i][i] for i in range(len(self.pairs)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        data = dataclasses.asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CrossEncodingMatrix":
        """The inverse of `to_dict`."""
        return cls(pairs=tuple((p[0], p[1]) for p in data["pairs"]), adapters=tuple(data["adapters"]),
                   correlation=tuple(tuple(_nan(v) for v in row) for row in data["correlation"]),
                   accuracy=tuple(tuple(_nan(v) for v in row) for row in data["accuracy"]),
                   class_means=tuple(tuple({k: _nan(v) for k, v in cell.items()} for cell in row)
                                     for row in data["class_means"]),
                   n_rows=tuple(int(n) for n in data["n_rows"]), dim=int(data.get("dim", 0)))

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically; returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def summary(self) -> str:
        """The correlation matrix and the class means as plain text."""
        labels = [pair_label(p) for p in self.pairs]
        lines = _matrix_text("cross-encoding r: encoder of pair (row) on the held-out rows of pair (column)", labels,
                             self.correlation, "encoder\\rows")
        lines.append("mean encoding per class of the rows:")
        for i, encoder in enumerate(labels):
            cells = []
            for j, rows in enumerate(labels):
                means = ", ".join(f"{c} {m:+.2f}" for c, m in self.class_means[i][j].items())
                cells.append(f"{rows}: {means}")
            lines.append(f"  {encoder} encoder -> " + "; ".join(cells))
        return "\n".join(lines)


@dataclass(frozen=True)
class DecoderCosineMatrix:
    """The cosine similarity of the pairs' decoder directions.

    For each decoder ``component`` (``bias``: ``c / s``; ``weight_<j>``: ``D_j / s``, in raw-gradient units over
    every target entry), ``cosines[component][i][k] = <v_i, v_k> / (||v_i|| ||v_k||)`` for the adapters of
    ``pairs[i]`` and ``pairs[k]`` (NaN when a direction is zero), and ``norms[component][i] = ||v_i||``.
    """

    pairs: tuple[Pair, ...]
    adapters: tuple[str, ...]
    components: tuple[str, ...]
    cosines: dict[str, tuple[tuple[float, ...], ...]]
    norms: dict[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        data = dataclasses.asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecoderCosineMatrix":
        """The inverse of `to_dict`."""
        return cls(pairs=tuple((p[0], p[1]) for p in data["pairs"]), adapters=tuple(data["adapters"]),
                   components=tuple(data["components"]),
                   cosines={k: tuple(tuple(_nan(v) for v in row) for row in m) for k, m in data["cosines"].items()},
                   norms={k: tuple(_nan(v) for v in row) for k, row in data["norms"].items()})

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically; returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def summary(self) -> str:
        """One cosine matrix per component as plain text."""
        labels = [pair_label(p) for p in self.pairs]
        lines: list[str] = []
        for component in self.components:
            lines += _matrix_text(f"decoder {component}: cosine similarity between the pairs' directions", labels,
                                  self.cosines[component], "pair")
        return "\n".join(lines)


@dataclass(frozen=True)
class PairEvaluation:
    """Every pair's `EncoderReport` on its own held-out rows, the `CrossEncodingMatrix` and the
    `DecoderCosineMatrix` (see `evaluate_pairs`)."""

    reports: dict[Pair, EncoderReport]
    cross: CrossEncodingMatrix
    decoder_cosines: DecoderCosineMatrix

    def table(self) -> list[dict[str, Any]]:
        """One row per pair: its adapter, held-out rows, correlation, accuracy, and the mean encoding of the rows of
        its first and of its second class (by ``factual_class``; with an ``alternative`` source a row reads the
        other class's word, so the first class's rows should encode to -1). The same keys for every pair."""
        rows = []
        for pair, adapter in zip(self.cross.pairs, self.cross.adapters):
            report = self.reports[pair]
            row = {"pair": pair_label(pair), "adapter": adapter, "rows": report.n_rows,
                   "r": report.correlation, "accuracy": report.accuracy}
            for key, cls in (("mean (1st class rows)", pair[0]), ("mean (2nd class rows)", pair[1])):
                row[key] = report.classes[cls].mean if cls in report.classes else None
            rows.append(row)
        return rows

    def summary(self) -> str:
        """Each pair's encoder line, then both matrices, as plain text."""
        lines = [f"{pair_label(p)}: {self.reports[p].summary().splitlines()[0]}" for p in self.cross.pairs]
        return "\n".join(lines + [self.cross.summary(), self.decoder_cosines.summary()])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the reports by pair label (``"A-B"``) and both matrices."""
        return {"reports": {pair_label(p): r.to_dict() for p, r in self.reports.items()},
                "cross_encoding": self.cross.to_dict(), "decoder_cosines": self.decoder_cosines.to_dict()}


def pair_adapters_of(model: Any) -> dict[Pair, str]:
    """Pair -> adapter name for every GRADIEND adapter of ``model`` that records its two ``feature_classes``.

    Returns:
        `dict[tuple[str, str], str]`: ``(feature_classes[0], feature_classes[1])`` -> adapter name.

    Raises:
        `ValueError`: when two adapters record the same pair (pass ``adapters=`` to choose), or none records any.
    """
    tuner, _, _ = model_parts(model)
    found: dict[Pair, str] = {}
    for name, config in tuner.peft_config.items():
        classes = getattr(config, "feature_classes", None)
        if not classes or len(classes) != 2:
            continue
        pair = (str(classes[0]), str(classes[1]))
        if pair in found:
            raise ValueError(f"Adapters {found[pair]!r} and {name!r} are both of pair {pair_label(pair)}; pass "
                             "adapters={pair: name} to choose.")
        found[pair] = name
    if not found:
        raise ValueError("The model has no GRADIEND adapter that records its feature_classes; pass "
                         "adapters={pair: name}.")
    return found


def _adapters(model: Any, pairs: Sequence[Pair], adapters: Optional[Mapping[Sequence[str], str]]) -> list[str]:
    given = pair_adapters_of(model) if adapters is None else {tuple(p): n for p, n in adapters.items()}
    missing = [pair_label(p) for p in pairs if p not in given]
    if missing:
        raise ValueError(f"No adapter for the pairs {missing}; the adapters known are "
                         f"{ {pair_label(p): n for p, n in given.items()} }. Pass adapters={{pair: name}}.")
    return [given[p] for p in pairs]


def _row_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a row's encoding depends on: its text, factual and alternative."""
    return row["text"], row["factual"], str(row.get("alternative", row["factual"]))


def cross_encoding_matrix(
    model: Any,
    rows_by_pair: Mapping[Sequence[str], Any],
    *,
    tokenizer: Any,
    adapters: Optional[Mapping[Sequence[str], str]] = None,
    encodings: Optional[Mapping[Sequence[str], Sequence[float]]] = None,
    batch_size: int = 16,
    dim: int = 0,
    progress: Optional[bool] = None,
) -> CrossEncodingMatrix:
    """Encodes every pair's held-out rows with every pair's encoder (see `CrossEncodingMatrix` for the maths).

    Args:
        model (`peft.PeftModel`): The model holding the pairs' adapters.
        rows_by_pair (`Mapping[tuple[str, str], rows]`): Each pair's held-out rows (e.g. ``mine_pairs(...)["test"]``);
            its keys, in order, are the matrix's pairs.
        tokenizer: The base model's tokenizer.
        adapters (`Mapping[tuple[str, str], str]`, *optional*): Pair -> adapter name (default `pair_adapters_of`).
        encodings (`Mapping[tuple[str, str], Sequence[float]]`, *optional*): Pair ``i``'s encodings of its own rows
            by its own adapter (e.g. ``[r["encoding"] for r in report.rows]`` of its `EncoderReport`), used for the
            diagonal instead of encoding those rows again.
        batch_size (`int`): Rows per backward pass.
        dim (`int`): The latent dimension reported.
        progress (`bool`, *optional*): Show progress bars (default: tqdm decides).

    Returns:
        `CrossEncodingMatrix`: cell ``[i][j]``: the encoder of the ``i``-th pair on the rows of the ``j``-th.

    Raises:
        `ValueError`: for a row whose class is not one of its pair's, or ``encodings`` of another length than the
            pair's rows.
    """
    pairs = [(str(p[0]), str(p[1])) for p in rows_by_pair]
    rows = {pair: as_rows(value, f"rows of pair {pair_label(pair)}")
            for pair, value in zip(pairs, rows_by_pair.values())}
    names = _adapters(model, pairs, adapters)
    given = {tuple(p): list(v) for p, v in (encodings or {}).items()}
    targets = {}
    for pair, name in zip(pairs, names):
        _, _, config = model_parts(model, name)
        stray = [r["factual_class"] for r in rows[pair] if r.get("factual_class") not in pair]
        if stray:
            raise ValueError(f"The rows of pair {pair_label(pair)} include rows of class {stray[0]!r}; give each pair "
                             "its own rows (mine_pairs of pair_feature(feature, pair)).")
        targets[pair] = [expected_sign(r, config.source, config.class_signs) for r in rows[pair]]
        if pair in given and len(given[pair]) != len(rows[pair]):
            raise ValueError(f"encodings of pair {pair_label(pair)} hold {len(given[pair])} values for "
                             f"{len(rows[pair])} rows.")
    correlation, accuracy, class_means = [], [], []
    for i, (encoder, name) in enumerate(zip(pairs, names)):
        tuner, name, config = model_parts(model, name)
        if not 0 <= dim < config.latent_dim:
            raise ValueError(f"dim={dim} is out of range for adapter {name!r} (latent_dim={config.latent_dim}).")
        unique: dict[tuple[str, str, str], int] = {}
        to_encode: list[dict[str, Any]] = []
        for pair in pairs:
            if pair == encoder and pair in given:
                continue
            for row in rows[pair]:
                if _row_key(row) not in unique:
                    unique[_row_key(row)] = len(to_encode)
                    to_encode.append(row)
        values = _encode_all(tuner, name, to_encode, collator_for(tokenizer, config.objective), batch_size, dim,
                             f"encoder {i + 1}/{len(pairs)}: rows of every pair", progress) if to_encode else []
        cells_r, cells_acc, cells_mean = [], [], []
        for pair in pairs:
            h = given[pair] if pair == encoder and pair in given else [values[unique[_row_key(r)]] for r in rows[pair]]
            cells_r.append(pearson(h, targets[pair]))
            cells_acc.append(sign_accuracy(h, targets[pair]))
            means = {}
            for cls in pair:
                own = [value for value, row in zip(h, rows[pair]) if row["factual_class"] == cls]
                means[cls] = sum(own) / len(own) if own else float("nan")
            cells_mean.append(means)
        correlation.append(tuple(cells_r))
        accuracy.append(tuple(cells_acc))
        class_means.append(tuple(cells_mean))
    return CrossEncodingMatrix(pairs=tuple(pairs), adapters=tuple(names), correlation=tuple(correlation),
                               accuracy=tuple(accuracy), class_means=tuple(class_means),
                               n_rows=tuple(len(rows[p]) for p in pairs), dim=dim)


def decoder_cosine_matrix(model: Any, pairs: Optional[Sequence[Sequence[str]]] = None,
                          adapters: Optional[Mapping[Sequence[str], str]] = None) -> DecoderCosineMatrix:
    """The cosine similarity of the pairs' decoder directions (see `DecoderCosineMatrix`), in float64.

    Args:
        model (`peft.PeftModel`): The model holding the pairs' adapters.
        pairs (`Sequence[tuple[str, str]]`, *optional*): The pairs, in order (default: those of ``adapters``).
        adapters (`Mapping[tuple[str, str], str]`, *optional*): Pair -> adapter name (default `pair_adapters_of`).

    Memory: every adapter's directions at once, ``(k + 1) n`` float64 values per pair.

    Returns:
        `DecoderCosineMatrix`: the cosines per component (``bias`` first, then ``weight_0``...).

    Raises:
        `ValueError`: for adapters of other target modules or other decoder components than the first pair's.
    """
    known = pair_adapters_of(model) if adapters is None else {tuple(p): n for p, n in adapters.items()}
    order = [(str(p[0]), str(p[1])) for p in (pairs if pairs is not None else known)]
    names = _adapters(model, order, known)
    directions = [decoder_directions(model, name) for name in names]
    components = tuple(sorted(directions[0], key=lambda c: -1 if c == "bias" else int(c.split("_")[1])))
    modules = {c: set(directions[0][c]) for c in components}
    for name, found in zip(names[1:], directions[1:]):
        if set(found) != set(components) or any(set(found[c]) != modules[c] for c in components):
            raise ValueError(f"Adapters {names[0]!r} and {name!r} have other decoder components or target modules; "
                             "compare adapters of the same targets and configuration.")

    def dot(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        return math.fsum(float((a[m] * b[m]).sum()) for m in sorted(a))

    cosines, norms = {}, {}
    for component in components:
        vectors = [d[component] for d in directions]
        lengths = [math.sqrt(dot(v, v)) for v in vectors]
        cosines[component] = tuple(
            tuple(dot(a, b) / (la * lb) if la > 0 and lb > 0 else float("nan") for b, lb in zip(vectors, lengths))
            for a, la in zip(vectors, lengths))
        norms[component] = tuple(lengths)
    return DecoderCosineMatrix(pairs=tuple(order), adapters=tuple(names), components=components, cosines=cosines,
                               norms=norms)


def evaluate_pairs(
    model: Any,
    rows_by_pair: Mapping[Sequence[str], Any],
    *,
    tokenizer: Any,
    neutral: Any = None,
    adapters: Optional[Mapping[Sequence[str], str]] = None,
    batch_size: int = 16,
    dim: int = 0,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> PairEvaluation:
    """Every pair's `evaluate_encoder` report on its own held-out rows, the cross-encoding matrix (its diagonal from
    those reports' encodings, so no row is encoded twice by one adapter) and the decoder cosine matrix.

    Args:
        model (`peft.PeftModel`): The model holding the pairs' adapters.
        rows_by_pair (`Mapping[tuple[str, str], rows]`): Each pair's held-out rows; its keys are the pairs, in order.
        tokenizer: The base model's tokenizer.
        neutral (*optional*): Neutral texts (or rows) for every report (see `evaluate_encoder`).
        adapters (`Mapping[tuple[str, str], str]`, *optional*): Pair -> adapter name (default `pair_adapters_of`).
        batch_size (`int`): Rows per backward pass.
        dim (`int`): The latent dimension reported.
        seed (`int`): Seeds the neutral rows' slots.
        progress (`bool`, *optional*): Show progress bars.

    Returns:
        `PairEvaluation`: the reports by pair, the cross-encoding matrix and the decoder cosine matrix.

    Raises:
        `ValueError`: as `evaluate_encoder` and `cross_encoding_matrix` do.
    """
    pairs = [(str(p[0]), str(p[1])) for p in rows_by_pair]
    names = _adapters(model, pairs, adapters)
    known = dict(zip(pairs, names))
    reports = {}
    for pair, rows in zip(pairs, rows_by_pair.values()):
        reports[pair] = evaluate_encoder(model, rows, tokenizer=tokenizer, neutral=neutral, batch_size=batch_size,
                                         adapter_name=known[pair], dim=dim, seed=seed, progress=progress)
        logger.info("pair %s: %s", pair_label(pair), reports[pair].summary().splitlines()[0])
    cross = cross_encoding_matrix(model, dict(zip(pairs, rows_by_pair.values())), tokenizer=tokenizer, adapters=known,
                                  encodings={p: [r["encoding"] for r in reports[p].rows] for p in pairs},
                                  batch_size=batch_size, dim=dim, progress=progress)
    return PairEvaluation(reports=reports, cross=cross, decoder_cosines=decoder_cosine_matrix(model, pairs, known))
