"""Term lists of the race and religion features: class words, person nouns and the cues of the controls.

Every list here was written for this package from common English words (facts, not copied text); no item comes from a
bias benchmark (nothing from StereoSet or CrowS-Pairs) or from another project's word list. Provenance and licence of
each list are recorded in :data:`SOURCES` (the package's licence applies).

- Race, three classes: ``Black`` (words ``Black``, ``African``), ``White`` (``White``, ``European``) and ``Asian``
  (``Asian``). The first word of each class is the group adjective the training and neutral-context rows put in
  their slot; the second is the continental ancestry adjective that the controls' slot takes after a country of
  origin ("... who comes from Kenya and is [MASK]" -> ``African``). ``Asian`` is both. A country decides the
  continent of origin, not anyone's race: the controls check that an edit keeps the model's geography, nothing more.
- Religion, three classes: ``Christian``, ``Jewish`` and ``Muslim`` (one adjective each). The controls' cues are the
  places of worship (church / synagogue / mosque), the scriptures (Bible / Torah / Quran), the clergy (priest /
  rabbi / imam) and a major festival (Easter / Passover / Ramadan) of each religion: practice, not stereotypes.

Every class word is one token for SmolLM2's tokenizer with its leading space (`tests/test_bias_groups.py` checks it
where SmolLM2 is installed): a causal LM predicts the slot's first token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FEATURES", "SOURCES", "GroupTerms", "group_terms"]

SOURCES: Mapping[str, str] = {
    "class words": "written for this package: common English group adjectives (facts); licence: the package's",
    "person nouns": "written for this package: common English role nouns (facts); licence: the package's",
    "countries": "written for this package: country names grouped by continent (facts); licence: the package's",
    "religious terms": "written for this package: each religion's place of worship, scripture, clergy and a major "
                       "festival (facts); licence: the package's",
    "templates": "written for this package (gradiend_peft.bias.groups.rows); licence: the package's",
}
"""Where each list comes from and under which licence (nothing from a benchmark or another project's list)."""

PERSON_NOUNS: Mapping[str, tuple[str, ...]] = {
    "train": ("student", "neighbour", "teacher", "driver", "cook", "writer", "farmer", "singer", "coach", "clerk",
              "painter", "tenant"),
    "validation": ("visitor", "player", "tourist", "customer"),
    "test": ("passenger", "volunteer", "patient", "reader"),
    "search": ("colleague", "engineer", "nurse", "lawyer", "pilot", "baker"),
    "report": ("doctor", "manager", "officer", "dentist", "waiter", "librarian"),
}
"""Role nouns of the rows' subjects ("the [MASK] student"), disjoint across the five splits. Each starts with any
letter: the determiner before the slot is never "a"/"an", which would give away ``Asian`` (an) from the others (a)."""


@dataclass(frozen=True)
class GroupTerms:
    """One feature's classes and control cues.

    Attributes:
        name (`str`): ``"race"`` or ``"religion"``.
        classes (`Mapping[str, tuple[str, ...]]`): class -> its words; the first word fills the training and
            neutral-context slots.
        control_words (`Mapping[str, str]`): class -> the word a control's slot takes (one of the class's words).
        control_cues (`Mapping[str, Mapping[str, tuple[str, ...]]]`): split (``"search"``/``"report"``) -> class ->
            the relative clauses that decide the class ("comes from Kenya"), disjoint across splits.
        benchmark_domain (`str`): the domain of `gradiend_peft.bias.benchmarks.run_bias_benchmarks`.
    """

    name: str
    classes: Mapping[str, tuple[str, ...]]
    control_words: Mapping[str, str]
    control_cues: Mapping[str, Mapping[str, tuple[str, ...]]]
    benchmark_domain: str

    def slot_word(self, class_name: str) -> str:
        """The word a training or neutral-context row's slot takes for ``class_name``."""
        return self.classes[class_name][0]


def _countries(names: str) -> tuple[str, ...]:
    return tuple(f"comes from {country}" for country in names.split(", "))


RACE = GroupTerms(
    name="race",
    classes={"Black": ("Black", "African"), "White": ("White", "European"), "Asian": ("Asian",)},
    control_words={"Black": "African", "White": "European", "Asian": "Asian"},
    control_cues={
        "search": {"Black": _countries("Nigeria, Ghana, Kenya, Senegal, Zambia"),
                   "White": _countries("Ireland, Poland, Norway, Germany, Portugal"),
                   "Asian": _countries("Japan, Korea, Vietnam, Thailand, Indonesia")},
        "report": {"Black": _countries("Ethiopia, Uganda, Cameroon, Mali, Tanzania"),
                   "White": _countries("Sweden, Finland, Austria, Denmark, Hungary"),
                   "Asian": _countries("China, Cambodia, Mongolia, Malaysia, Laos")},
    },
    benchmark_domain="race",
)

RELIGION = GroupTerms(
    name="religion",
    classes={"Christian": ("Christian",), "Jewish": ("Jewish",), "Muslim": ("Muslim",)},
    control_words={"Christian": "Christian", "Jewish": "Jewish", "Muslim": "Muslim"},
    control_cues={
        "search": {"Christian": ("prays at the church every week", "reads the Bible every day"),
                   "Jewish": ("prays at the synagogue every week", "reads the Torah every day"),
                   "Muslim": ("prays at the mosque every week", "reads the Quran every day")},
        "report": {"Christian": ("often talks with the priest", "celebrates Easter with the family"),
                   "Jewish": ("often talks with the rabbi", "celebrates Passover with the family"),
                   "Muslim": ("often talks with the imam", "celebrates Ramadan with the family")},
    },
    benchmark_domain="religion",
)

FEATURES: Mapping[str, GroupTerms] = {"race": RACE, "religion": RELIGION}
"""The features by name."""


def group_terms(name: str) -> GroupTerms:
    """The terms of the feature ``name``.

    Args:
        name: ``"race"`` or ``"religion"``.

    Returns:
        Its `GroupTerms`.

    Raises:
        ValueError: for another name.
    """
    if name not in FEATURES:
        raise ValueError(f"unknown group feature {name!r}; choose one of {sorted(FEATURES)}.")
    return FEATURES[name]
