"""Definitional gender subjects: nouns whose meaning fixes the pronoun ("my mother", "the king", "the waitress").

A debiasing edit should leave these alone: "My dad said that [MASK] ..." must keep "he". The inventory below is
split three ways, with no noun in two splits:

- ``"train"``: for training rows (:func:`~gradiend_peft.bias.gender.definitional_rows`), e.g. for an adapter whose
  directions are kept out of a debiasing edit;
- ``"search"``: for the controls the rewrite search guards with;
- ``"report"``: for the controls of the reported numbers.

Each kind of noun (kinship, title, role, person) is dealt over the three splits separately, so every split holds
every kind. The pairs are common English words (the female and male form of one definitional noun), in the spirit of
Bolukbasi et al.'s definitional pairs and gender-specific words (NeurIPS 2016, tolga-b/debiaswe, MIT) and the gendered
word pairs of Liang et al. (ACL 2021; Ewanwong/debias_NLG, MIT); the lists here were written for this package.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DEFINITIONAL_NOUNS", "DEFINITIONAL_SPLITS", "DefinitionalNoun", "definitional_nouns"]

DEFINITIONAL_SPLITS = ("train", "search", "report")
"""The three disjoint pools of definitional nouns."""


@dataclass(frozen=True)
class DefinitionalNoun:
    """The female and male form of one definitional noun.

    Attributes:
        female: the female form, e.g. ``"mother"``.
        male: the male form, e.g. ``"father"``.
        determiner: what precedes it in a subject: ``"my"``, ``"the"``, or ``""`` for a title that takes a
            surname (``"Mrs."`` / ``"Mr."``).
        kind: ``"kinship"``, ``"title"``, ``"role"`` or ``"person"``.
    """

    female: str
    male: str
    determiner: str
    kind: str

    def subject(self, gender: str, surname: str = "Smith") -> str:
        """The subject phrase of ``gender`` (``"female"``/``"male"``): ``"my mother"``, ``"Mrs. Smith"``."""
        word = self.female if gender == "female" else self.male
        if not self.determiner:
            return f"{word} {surname}"
        return f"{self.determiner} {word}"


def _pairs(kind: str, determiner: str, text: str) -> tuple[DefinitionalNoun, ...]:
    return tuple(DefinitionalNoun(f, m, determiner, kind) for f, m in (p.split("/") for p in text.split()))


DEFINITIONAL_NOUNS: tuple[DefinitionalNoun, ...] = (
    _pairs("kinship", "my", "mother/father mom/dad sister/brother wife/husband daughter/son grandmother/grandfather "
                            "aunt/uncle girlfriend/boyfriend grandma/grandpa niece/nephew granddaughter/grandson "
                            "stepmother/stepfather stepdaughter/stepson stepsister/stepbrother godmother/godfather "
                            "goddaughter/godson")
    + _pairs("title", "the", "queen/king princess/prince duchess/duke empress/emperor tsarina/tsar "
                             "priestess/priest baroness/baron abbess/abbot")
    + _pairs("title", "", "Mrs./Mr.")
    + _pairs("role", "the", "actress/actor waitress/waiter policewoman/policeman businesswoman/businessman "
                            "chairwoman/chairman spokeswoman/spokesman hostess/host heroine/hero landlady/landlord "
                            "headmistress/headmaster congresswoman/congressman stewardess/steward "
                            "saleswoman/salesman sportswoman/sportsman councilwoman/councilman camerawoman/cameraman "
                            "horsewoman/horseman fisherwoman/fisherman")
    + _pairs("person", "the", "woman/man girl/boy lady/gentleman bride/groom widow/widower nun/monk "
                              "schoolgirl/schoolboy housewife/househusband witch/wizard cowgirl/cowboy heiress/heir "
                              "sorceress/sorcerer")
)
"""Every definitional noun pair (female form, male form, determiner, kind)."""

SURNAMES = ("Smith", "Johnson", "Miller", "Davis", "Wilson", "Taylor", "Clark", "Lewis", "Walker", "Hall", "Young",
            "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts")
"""Surnames for the titles that take one ("Mrs. Miller"); frequent U.S. surnames, none of them gendered."""


def definitional_nouns(split: str, split_seed: int = 0) -> list[DefinitionalNoun]:
    """The definitional nouns of one pool.

    Within each kind the pairs (listed from the most to the least common) are taken three at a time, and a draw
    seeded with ``split_seed`` gives one of each three to ``"train"``, one to ``"search"`` and one to ``"report"``:
    every pool has every kind, common and rare words alike, and no pair is in two pools.

    Args:
        split (`str`): ``"train"``, ``"search"`` or ``"report"``.
        split_seed (`int`, *optional*, defaults to ``0``): fixes the deal (use one value everywhere).

    Returns:
        The pool's pairs, in inventory order.

    Raises:
        ValueError: for another split.
    """
    if split not in DEFINITIONAL_SPLITS:
        raise ValueError(f"split must be one of {DEFINITIONAL_SPLITS}; got {split!r}.")
    rng = random.Random(f"definitional-{split_seed}")
    chosen: set[DefinitionalNoun] = set()
    for kind in dict.fromkeys(n.kind for n in DEFINITIONAL_NOUNS):
        group = [n for n in DEFINITIONAL_NOUNS if n.kind == kind]
        for start in range(0, len(group), len(DEFINITIONAL_SPLITS)):
            pools = list(DEFINITIONAL_SPLITS)
            rng.shuffle(pools)
            chosen.update(n for n, pool in zip(group[start : start + len(pools)], pools) if pool == split)
    return [n for n in DEFINITIONAL_NOUNS if n in chosen]
