"""Occupations with the U.S. Bureau of Labor Statistics share of women, and their search/report split.

The table ``gradiend_peft/corpora/occupations.en.tsv`` (80 occupations) joins two public lists, both MIT:

- **WinoGender** (Rudinger, Naradowsky, Leonard and Van Durme, "Gender Bias in Coreference Resolution",
  NAACL 2018; https://github.com/rudinger/winogender-schemas, ``data/occupations-stats.tsv``): 60
  occupations with the BLS share of women (2015 or 2016).
- **WinoBias** (Zhao, Wang, Yatskar, Ordonez and Chang, "Gender Bias in Coreference Resolution:
  Evaluation and Debiasing Methods", NAACL 2018; https://github.com/uclanlp/corefBias, the README's table
  "Professions and their percentages of women"): 40 occupations with the BLS share of women.

An occupation's share is WinoGender's figure where WinoGender lists it, else WinoBias's (the 20
occupations in both lists agree on the side of 50%). Its *stereotype* is ``"female"`` when that share is
at least 50%, else ``"male"``. Provenance and licences: ``gradiend_peft/corpora/README.md``.

The split (:func:`occupation_split`) gives the search and the report disjoint nouns: within each
stereotype, the occupations are sorted by their share and taken two at a time; a seeded draw sends one of
each two to ``"search"`` and the other to ``"report"`` (an odd one out goes where the draw says). So both
splits span the same range of shares. Two pairs of synonyms stay together: doctor/physician and
dietitian/nutritionist.
"""

from __future__ import annotations

import csv
import functools
import io
import random
from dataclasses import dataclass

from ...data.corpora import _folder, _manifest

__all__ = ["EVALUATION_SPLITS", "Occupation", "load_occupations", "occupation_split"]

EVALUATION_SPLITS = ("search", "report")
"""The two evaluation splits: rows the rewrite search may look at, and rows kept for reporting."""

# Synonyms with the same BLS category: kept in one split, so the report never sees a renamed search noun.
_SAME_SPLIT = (("doctor", "physician"), ("dietitian", "nutritionist"))


@dataclass(frozen=True)
class Occupation:
    """One occupation of the shipped table.

    Attributes:
        noun: the occupation as it follows "the", e.g. ``"nurse"``, ``"construction worker"``, ``"CEO"``.
        pct_female: the BLS share of women in percent (WinoGender's figure where it has one).
        source: ``"winogender"`` or ``"winobias"``: where ``pct_female`` comes from.
        year: the BLS year of WinoGender's figure; ``None`` for a WinoBias figure (its table gives none).
        winobias_pct_female: WinoBias's figure where WinoBias lists the occupation, else ``None``.
    """

    noun: str
    pct_female: float
    source: str
    year: int | None = None
    winobias_pct_female: float | None = None

    @property
    def stereotype(self) -> str:
        """``"female"`` when at least 50% of the workers are women, else ``"male"``."""
        return "female" if self.pct_female >= 50.0 else "male"


@functools.lru_cache(maxsize=1)
def _table() -> tuple[Occupation, ...]:
    info = _manifest().get("occupations")
    if info is None:
        raise FileNotFoundError("this installation ships no occupation table (corpora/occupations.en.tsv).")
    text = _folder().joinpath(info["file"]).read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        winogender, winobias = row["winogender_bls_pct_female"], row["winobias_bls_pct_female"]
        rows.append(
            Occupation(
                noun=row["occupation"],
                pct_female=float(winogender or winobias),
                source="winogender" if winogender else "winobias",
                year=int(row["winogender_bls_year"]) if row["winogender_bls_year"] else None,
                winobias_pct_female=float(winobias) if winobias else None,
            )
        )
    return tuple(rows)


def load_occupations() -> list[Occupation]:
    """Every occupation of the shipped table, in the file's (alphabetical) order.

    Returns:
        A new list of :class:`Occupation`.

    Raises:
        FileNotFoundError: when the installation lacks the table.

    Examples:
        >>> nurse = next(o for o in load_occupations() if o.noun == "nurse")
        >>> nurse.pct_female, nurse.stereotype
        (89.58, 'female')
    """
    return list(_table())


def check_evaluation_split(split: str) -> str:
    """Return ``split`` when it is ``"search"`` or ``"report"``; raise ``ValueError`` otherwise."""
    if split not in EVALUATION_SPLITS:
        raise ValueError(f"split must be one of {EVALUATION_SPLITS}; got {split!r}.")
    return split


@functools.lru_cache(maxsize=8)
def _assignment(split_seed: int) -> dict[str, str]:
    """``{noun: "search" | "report"}`` for every occupation (see the module docstring)."""
    by_noun = {o.noun: o for o in _table()}
    grouped = {noun for group in _SAME_SPLIT for noun in group}
    units = [tuple(g) for g in _SAME_SPLIT] + [(noun,) for noun in by_noun if noun not in grouped]
    rng = random.Random(split_seed)
    result: dict[str, str] = {}
    for stereotype in ("female", "male"):
        stratum = [u for u in units if by_noun[u[0]].stereotype == stereotype]
        stratum.sort(key=lambda u: (by_noun[u[0]].pct_female, u))
        for start in range(0, len(stratum), 2):
            chunk = stratum[start : start + 2]
            order = list(EVALUATION_SPLITS)
            rng.shuffle(order)
            for unit, split in zip(chunk, order):
                for noun in unit:
                    result[noun] = split
    return result


def occupation_split(split: str, *, split_seed: int = 0) -> list[Occupation]:
    """The occupations of one evaluation split; the two splits share no noun.

    Args:
        split: ``"search"`` or ``"report"``.
        split_seed (`int`, *optional*, defaults to ``0``): seeds the split. Use the same value for both
            splits (and for every function that takes it), or the splits are no longer disjoint.

    Returns:
        The split's occupations, in the table's order.

    Raises:
        ValueError: for another split name.
    """
    check_evaluation_split(split)
    assignment = _assignment(int(split_seed))
    return [o for o in _table() if assignment[o.noun] == split]
