"""`BiasBenchmarkReport`: the bias benchmarks' scores as a frozen, JSON-ready record, and a before/after table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ...atomic import atomic_write_json
from ...atomic import json_safe
from .datasets import BENCHMARK_DATA_NOTICE
from .scores import PreferenceScores, StereoSetScores

__all__ = ["BiasBenchmarkReport", "compare_reports"]

STEREOSET_PARTS = ("stereoset_intrasentence", "stereoset_intersentence", "stereoset")
PREFERENCE_PARTS = ("crows_pairs", "wino")
LABELS = {
    "stereoset_intrasentence": "StereoSet intrasentence",
    "stereoset_intersentence": "StereoSet intersentence",
    "stereoset": "StereoSet (both pooled)",
    "crows_pairs": "CrowS-Pairs (subset)",
    "wino": "Wino (WinoBias-style)",
}


@dataclass(frozen=True)
class BiasBenchmarkReport:
    """What `run_bias_benchmarks` measured. A benchmark that was not run is ``None``.

    Attributes:
        objective: ``causal_lm`` or ``masked_lm``.
        bias_type: the bias type of the StereoSet and CrowS-Pairs items (``gender``).
        stereoset_intrasentence (`StereoSetScores`, *optional*): SS, LMS, ICAT on the intrasentence items.
        stereoset_intersentence (`StereoSetScores`, *optional*): the same on the intersentence items.
        stereoset (`StereoSetScores`, *optional*): the same on both kinds pooled.
        crows_pairs (`PreferenceScores`, *optional*): % of pairs whose more stereotypical sentence scores higher.
        wino (`PreferenceScores`, *optional*): % of rows whose pro-stereotypical pronoun is preferred.
        conventions: per benchmark, how a sentence was scored (BOS, mean or sum, PLL).
        settings: how the run went (model class, batch size, item limit, seconds per benchmark).
        data_notice: the data's licence and provenance.
    """

    objective: str
    bias_type: str
    stereoset_intrasentence: Optional[StereoSetScores] = None
    stereoset_intersentence: Optional[StereoSetScores] = None
    stereoset: Optional[StereoSetScores] = None
    crows_pairs: Optional[PreferenceScores] = None
    wino: Optional[PreferenceScores] = None
    conventions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data_notice: str = BENCHMARK_DATA_NOTICE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        data: dict[str, Any] = {"objective": self.objective, "bias_type": self.bias_type}
        for name in STEREOSET_PARTS + PREFERENCE_PARTS:
            value = getattr(self, name)
            data[name] = None if value is None else value.to_dict()
        data.update(conventions=dict(self.conventions), settings=dict(self.settings), data_notice=self.data_notice)
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BiasBenchmarkReport":
        """The inverse of `to_dict`."""
        parts: dict[str, Any] = {}
        for name in STEREOSET_PARTS:
            parts[name] = None if data.get(name) is None else StereoSetScores.from_dict(data[name])
        for name in PREFERENCE_PARTS:
            parts[name] = None if data.get(name) is None else PreferenceScores.from_dict(data[name])
        return cls(objective=data["objective"], bias_type=data["bias_type"], **parts,
                   conventions=dict(data.get("conventions") or {}), settings=dict(data.get("settings") or {}),
                   data_notice=data.get("data_notice") or BENCHMARK_DATA_NOTICE)

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically; returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def summary(self) -> str:
        """A plain-text table of the scores, the conventions and the data notice."""
        model = self.settings.get("model")
        title = f"Bias benchmarks ({self.objective}, {self.bias_type})" + (f": {model}" if model else "")
        lines = [title, f"{'benchmark':<26} {'n':>5} {'SS':>6} {'LMS':>6} {'ICAT':>6} {'score':>6} {'gap':>6}"]
        for name in STEREOSET_PARTS:
            value = getattr(self, name)
            if value is not None:
                cells = " ".join(_cell(v) for v in (value.ss, value.lms, value.icat))
                lines.append(f"{LABELS[name]:<26} {value.n:>5} {cells}")
        for name in PREFERENCE_PARTS:
            value = getattr(self, name)
            if value is not None:
                gap = _cell(value.mean_abs_gap, ".3f")
                lines.append(f"{LABELS[name]:<26} {value.n:>5} {'':>6} {'':>6} {'':>6} {_cell(value.score)} {gap}")
        lines.append("ideal: SS 50, LMS 100, ICAT 100, CrowS/Wino score 50 (% stereotypical preferred); "
                     "gap: mean pair-normalised probability gap")
        lines += [f"{name}: {text}" for name, text in self.conventions.items()]
        lines.append(self.data_notice)
        return "\n".join(lines)


def _cell(value: Optional[float], spec: str = ".1f", width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def compare_reports(named_reports: Mapping[str, BiasBenchmarkReport]) -> str:
    """A before/after table: one row per report (in the given order), with StereoSet intrasentence SS/LMS/ICAT,
    intersentence SS/LMS/ICAT, CrowS-Pairs and Wino (``-`` where a report lacks a benchmark).

    Args:
        named_reports: ``{name: report}``, e.g. ``{"base": before, "debiased": after}``.

    Returns:
        `str`: the table, followed by the data notice.
    """
    if not named_reports:
        raise ValueError("give at least one report.")
    width = max(12, *(len(name) for name in named_reports))
    header = (f"{'':<{width}} {'intra SS':>8} {'LMS':>6} {'ICAT':>6} {'inter SS':>8} {'LMS':>6} {'ICAT':>6} "
              f"{'CrowS':>6} {'Wino':>6}")
    lines = [header]
    for name, report in named_reports.items():
        cells = []
        for part in ("stereoset_intrasentence", "stereoset_intersentence"):
            value = getattr(report, part)
            ss, lms, ic = (None, None, None) if value is None else (value.ss, value.lms, value.icat)
            cells += [_cell(ss, width=8), _cell(lms), _cell(ic)]
        for part in PREFERENCE_PARTS:
            value = getattr(report, part)
            cells.append(_cell(None if value is None else value.score))
        lines.append(f"{name:<{width}} " + " ".join(cells))
    lines.append("ideal: SS 50, LMS 100, ICAT 100, CrowS 50, Wino 50 (CrowS/Wino: % stereotypical preferred)")
    objectives = {report.objective for report in named_reports.values()}
    if len(objectives) > 1:
        lines.append(f"note: the reports were scored with different objectives {sorted(objectives)}.")
    lines.append(BENCHMARK_DATA_NOTICE)
    return "\n".join(lines)
