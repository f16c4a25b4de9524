"""Plots of GRADIEND training and evaluation, written to PNG files (matplotlib's Agg canvas: never a display).

Every function takes the object (or its ``to_dict()`` / saved JSON form), writes the PNG atomically and returns
the path. Each refuses input with nothing to plot with a ``ValueError`` that says what is missing. Needs
matplotlib (``pip install gradiend-peft[plot]``).
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .atomic import atomic_write_bytes

__all__ = ["plot_convergence", "plot_cross_encoding", "plot_decoder_cosines", "plot_encoder_distributions",
           "plot_probability_shifts", "plot_rewrite_grid"]

_STEP_KEYS = ("step", "global_step", "epoch")


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Plotting needs matplotlib: pip install 'gradiend-peft[plot]'.") from err
    figure = Figure(figsize=(width, height), dpi=100)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _save(figure, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _as_dict(obj: Any, what: str) -> dict[str, Any]:
    if obj is None:
        raise ValueError(f"Nothing to plot: the {what} is None.")
    return dict(obj) if isinstance(obj, Mapping) else obj.to_dict()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def plot_convergence(logs: Sequence[Mapping[str, Any]], path: str, *, keys: Optional[Sequence[str]] = None,
                     title: Optional[str] = None) -> str:
    """Training curves: one panel per logged quantity against the step.

    Args:
        logs: log dicts as a trainer writes them (``trainer.state.log_history``), each with ``step`` (or
            ``global_step``/``epoch``) and numbers such as ``loss`` or ``eval_correlation``.
        path: the PNG file to write.
        keys: the quantities to plot (default: ``loss`` and every ``eval_*`` key found).
        title: a title for the figure.
    """
    if not logs:
        raise ValueError("Nothing to plot: the training log is empty.")
    step_key = next((k for k in _STEP_KEYS if any(k in log for log in logs)), None)
    if step_key is None:
        raise ValueError(f"The training log has no step: each entry needs one of {_STEP_KEYS}.")
    if keys is None:
        found = {k for log in logs for k, v in log.items() if _is_number(v)}
        keys = [k for k in ("loss",) if k in found] + sorted(k for k in found if k.startswith("eval_") and k != "eval_step")
    series = {}
    for key in keys:
        points = [(float(log[step_key]), float(log[key])) for log in logs
                  if _is_number(log.get(step_key)) and _is_number(log.get(key))]
        if points:
            series[key] = sorted(points)
    if not series:
        raise ValueError(f"Nothing to plot: no log entry has a {step_key} and any of {list(keys) or 'loss / eval_*'}.")
    figure, axes = _figure(6.0, 2.4 * len(series), nrows=len(series))
    for ax, (key, points) in zip(axes, series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if "correlation" in key:
            ax.axhline(0.0, color="grey", linewidth=0.8)
    axes[-1].set_xlabel(step_key)
    if title:
        axes[0].set_title(title)
    return _save(figure, path)


def plot_encoder_distributions(report: Any, path: str, *, bins: int = 30) -> str:
    """Encodings per class (histograms, neutral rows too) and per target word (box plots), from an `EncoderReport`."""
    data = _as_dict(report, "encoder report")
    rows = list(data.get("rows") or [])
    if not rows:
        raise ValueError("Nothing to plot: the encoder report holds no rows.")
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(f"class {row.get('factual_class')}", []).append(float(row["encoding"]))
    neutral = [float(r["encoding"]) for r in data.get("neutral_rows") or []]
    if neutral:
        groups["neutral"] = neutral
    words: dict[str, list[float]] = {}
    for row in rows:
        words.setdefault(f"{row['factual'].lower()} ({row.get('factual_class')})", []).append(float(row["encoding"]))
    figure, (left, right) = _figure(11.0, 4.0, ncols=2)
    low = min(min(v) for v in groups.values())
    high = max(max(v) for v in groups.values())
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    for label, values in groups.items():
        left.hist(values, bins=edges, alpha=0.55, label=f"{label} (n={len(values)})")
    left.set_xlabel("encoding h")
    left.set_ylabel("rows")
    left.legend(fontsize=8)
    title = f"r = {data['correlation']:+.3f}" if _is_number(data.get("correlation")) else "r undefined"
    if _is_number(data.get("accuracy")):
        title += f", accuracy = {data['accuracy']:.3f}"
    left.set_title(title)
    names = sorted(words)
    try:
        right.boxplot([words[n] for n in names], orientation="horizontal")
    except TypeError:  # matplotlib < 3.10
        right.boxplot([words[n] for n in names], vert=False)
    right.set_yticks(range(1, len(names) + 1), labels=names, fontsize=8)
    right.set_xlabel("encoding h")
    right.set_title("per target word")
    right.axvline(0.0, color="grey", linewidth=0.8)
    return _save(figure, path)


def plot_rewrite_grid(result: Any, path: str, *, metric: str = "score") -> str:
    """The rewrite search as a heatmap, feature factor x learning rate, of the policy score (or another metric such as
    ``lms``); cells that fail a guard are crossed out, the chosen candidate is framed in red."""
    data = _as_dict(result, "rewrite result")
    candidates = list(data.get("candidates") or [])
    if not candidates:
        raise ValueError("Nothing to plot: the rewrite result has no candidates.")
    ffs = sorted({float(c["feature_factor"]) for c in candidates})
    lrs = sorted({float(c["lr"]) for c in candidates})
    values = [[math.nan] * len(lrs) for _ in ffs]
    numeric = sorted(k for k, v in candidates[0].items() if _is_number(v) or v is None)
    if metric not in numeric:
        raise ValueError(f"metric {metric!r} is not a number of the candidates; choose one of {numeric}.")
    for c in candidates:
        v = c.get(metric)
        values[ffs.index(float(c["feature_factor"]))][lrs.index(float(c["lr"]))] = math.nan if v is None else float(v)
    import numpy as np

    matrix = np.ma.masked_invalid(np.array(values, dtype=float))
    figure, (ax,) = _figure(max(6.0, 0.32 * len(lrs) + 3), max(3.0, 0.45 * len(ffs) + 1.8))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="lower")
    figure.colorbar(image, ax=ax, label=metric)
    ax.set_xticks(range(len(lrs)), labels=[f"{lr:.3g}" for lr in lrs], rotation=90, fontsize=7)
    ax.set_yticks(range(len(ffs)), labels=[f"{ff:+g}" for ff in ffs], fontsize=8)
    ax.set_xlabel("lr")
    ax.set_ylabel("feature factor")
    for c in candidates:
        if not c.get("feasible", True):
            ax.plot(lrs.index(float(c["lr"])), ffs.index(float(c["feature_factor"])), marker="x", color="white",
                    markersize=5, linestyle="none")
    best = data.get("best")
    title = f"{(data.get('policy') or {}).get('name', 'policy')}: {metric}"
    if best is not None:
        from matplotlib.patches import Rectangle

        x, y = lrs.index(float(best["lr"])), ffs.index(float(best["feature_factor"]))
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        title += f" (chosen: ff {best['feature_factor']:+g}, lr {best['lr']:.3g}; x = fails a guard)"
    ax.set_title(title, fontsize=9)
    return _save(figure, path)


def plot_probability_shifts(result: Any, path: str) -> str:
    """Before/after of the chosen rewrite: mean ``P(C)`` per row class and class (bars), and every row's
    ``P(A) - P(B)`` before against after (points)."""
    data = _as_dict(result, "rewrite result")
    if data.get("best") is None or not data.get("best_row_probs"):
        raise ValueError("Nothing to plot: the rewrite search chose no candidate (best is None).")
    classes = list(data["classes"])
    before, after = data["base_row_probs"], data["best_row_probs"]
    row_classes = list(data.get("row_classes") or [None] * len(before))
    if not before or len(before) != len(after):
        raise ValueError("Nothing to plot: the rewrite result has no per-row probabilities.")
    figure, (bars, points) = _figure(11.0, 4.0, ncols=2)
    groups = sorted({str(c) for c in row_classes})
    labels, width = [], 0.2
    for g, group in enumerate(groups):
        idx = [i for i, c in enumerate(row_classes) if str(c) == group]
        for j, cls in enumerate(classes):
            for k, (probs, tag) in enumerate(((before, "before"), (after, "after"))):
                mean = sum(probs[i][j] for i in idx) / len(idx)
                x = g + (2 * j + k - 1.5) * width
                bars.bar(x, mean, width=width, color=f"C{j}", alpha=0.45 if tag == "before" else 0.95,
                         label=f"P({cls}) {tag}" if g == 0 else None)
        labels.append(f"rows of {group} (n={len(idx)})")
    bars.set_xticks(range(len(groups)), labels=labels, fontsize=8)
    bars.set_ylabel("mean probability at the slot")
    bars.legend(fontsize=8)
    best = data["best"]
    bars.set_title(f"feature factor {best['feature_factor']:+g}, lr {best['lr']:.3g}")
    gap_before = [p[0] - p[1] for p in before]
    gap_after = [p[0] - p[1] for p in after]
    for group in groups:
        idx = [i for i, c in enumerate(row_classes) if str(c) == group]
        points.scatter([gap_before[i] for i in idx], [gap_after[i] for i in idx], s=12, label=f"rows of {group}")
    low = min(gap_before + gap_after)
    high = max(gap_before + gap_after)
    points.plot([low, high], [low, high], color="grey", linewidth=0.8)
    points.axhline(0.0, color="grey", linewidth=0.5, linestyle=":")
    points.set_xlabel(f"P({classes[0]}) - P({classes[1]}) before")
    points.set_ylabel("after")
    points.legend(fontsize=8)
    return _save(figure, path)


def _pair_names(data: Mapping[str, Any], what: str) -> list[str]:
    pairs = list(data.get("pairs") or [])
    if not pairs:
        raise ValueError(f"Nothing to plot: the {what} has no pairs.")
    return [f"{p[0]}-{p[1]}" for p in pairs]


def _heatmap(ax, values: Sequence[Sequence[Any]], labels: Sequence[str], figure, colour_label: str) -> None:
    """A -1..+1 heatmap of a square matrix over ``labels``, every cell written out (blank: undefined)."""
    import numpy as np

    matrix = np.ma.masked_invalid(np.array([[math.nan if v is None else float(v) for v in row] for row in values]))
    image = ax.imshow(matrix, cmap="coolwarm", vmin=-1.0, vmax=1.0)
    figure.colorbar(image, ax=ax, label=colour_label, shrink=0.8)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if _is_number(v):
                ax.text(j, i, f"{float(v):+.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(float(v)) > 0.6 else "black")


def plot_cross_encoding(matrix: Any, path: str) -> str:
    """The cross-encoding matrix as a heatmap: each pair's encoder (rows) on each pair's held-out rows (columns),
    Pearson r against the column pair's labels; from a `CrossEncodingMatrix` (or its ``to_dict()``)."""
    data = _as_dict(matrix, "cross-encoding matrix")
    labels = _pair_names(data, "cross-encoding matrix")
    size = max(4.5, 0.9 * len(labels) + 2.5)
    figure, (ax,) = _figure(size + 1.0, size)
    _heatmap(ax, data["correlation"], labels, figure, "Pearson r")
    ax.set_xlabel("held-out rows of pair")
    ax.set_ylabel("encoder of pair")
    ax.set_title("cross-encoding: r of each encoder with each pair's labels", fontsize=9)
    return _save(figure, path)


def plot_decoder_cosines(matrix: Any, path: str) -> str:
    """The cosine similarity of the pairs' decoder directions, one heatmap per decoder component (``bias``,
    ``weight_0``...), from a `DecoderCosineMatrix` (or its ``to_dict()``)."""
    data = _as_dict(matrix, "decoder cosine matrix")
    labels = _pair_names(data, "decoder cosine matrix")
    components = list(data.get("components") or [])
    if not components:
        raise ValueError("Nothing to plot: the decoder cosine matrix has no components.")
    size = max(4.0, 0.9 * len(labels) + 2.2)
    figure, axes = _figure((size + 1.0) * len(components), size, ncols=len(components))
    for ax, component in zip(axes, components):
        _heatmap(ax, data["cosines"][component], labels, figure, "cosine")
        ax.set_title(f"decoder {component}", fontsize=9)
    return _save(figure, path)
