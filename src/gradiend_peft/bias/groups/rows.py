"""Template rows of the race and religion features: training rows, neutral-context rows and same-frame controls.

Why templates: the embedded English corpus (about 95,600 sentences) holds too few group words to mine from: ``Black``
8 times, ``White`` 10, ``Asian`` 3 (case-sensitive, whole words; ``black``/``white`` are almost always colours), and
``Christian`` 18, ``Jewish`` 22, ``Muslim`` 7 (``Jews`` 409 times, nearly all in the World English Bible, whose
context decides the group). `mine_pairs` balances the classes, so a pair would keep a few dozen rows at most.

Every row has one ``[MASK]`` slot for a class word, after a lead-in ("On Sunday, the [MASK] student was bored and read a
book."), so a causal LM predicts it from the text before it. The determiner before the slot is ``the``, ``my``, ``our``
or ``their``, never ``a``/``an`` (which would tell ``Asian`` from the others).

- :func:`training_rows`: a pair's rows in frames whose context does not decide the group; every text appears twice,
  once with each class of the pair as the factual (the other's word is the alternative). Train, validation and test
  share no frame (:data:`TRAIN_TEMPLATES`) and no person noun (`terms.PERSON_NOUNS`).
- :func:`neutral_context_rows`: the rewrite search's and the report's rows, the same kind of frames
  (:data:`SEARCH_TEMPLATES`, :data:`REPORT_TEMPLATES`), other nouns; the factual class alternates between the pair's
  classes (no stereotype decides it: the debias policy measures ``|P(A) - P(B)|``, which does not depend on it).
- :func:`context_controls`: the same frames with a subject whose relative clause decides the class ("On Sunday, the
  engineer, who comes from Kenya and is [MASK], was bored and read a book." -> ``African``), for the control guard.

The ``"search"`` and ``"report"`` splits share no frame, no noun and no cue, and none of them is a training frame.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...data import PAIR_COLUMNS, SPLITS, Feature, pair_feature, pairs_of_classes
from ..gender.templates import fill, to_dataset
from .terms import PERSON_NOUNS, GroupTerms, group_terms

if TYPE_CHECKING:
    import datasets

__all__ = [
    "REPORT_TEMPLATES",
    "SEARCH_TEMPLATES",
    "TRAIN_TEMPLATES",
    "context_controls",
    "group_feature",
    "neutral_context_rows",
    "search_classes",
    "training_rows",
]

TRAIN_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "train": (
        "Last Saturday, {subject} said that the bus would be late.",
        "This afternoon, {subject} told everyone about the new park.",
        "Last night, {subject} went home early because of the rain.",
        "When {subject} woke up, the house was quiet.",
        "In the kitchen, {subject} opened the fridge and took out the milk.",
        "On Wednesday, {subject} knew it was time to leave.",
        "Before the game, {subject} hoped to win.",
        "After dinner, {subject} wrote a long letter.",
        "Yesterday afternoon, {subject} walked to the library.",
        "At the door, {subject} checked the keys.",
        "This evening, {subject} came in late and apologized.",
        "At the cinema, {subject} laughed at the film.",
        "At breakfast, {subject} read the news.",
        "For the picnic, {subject} brought dessert.",
        "On the way home, {subject} bought some bread.",
        "At the station, {subject} waited for the train.",
    ),
    "validation": (
        "After the storm, {subject} cleaned the garden.",
        "Once again, {subject} made some tea.",
        "In class, {subject} asked for a pen.",
        "Last spring, {subject} travelled by train.",
    ),
    "test": (
        "Before the meeting, {subject} printed the agenda.",
        "On Tuesday, {subject} fixed the old bicycle.",
        "During the holidays, {subject} visited the museum.",
        "Early in the morning, {subject} went for a run.",
    ),
}
"""Frames of the training rows by split (16 / 4 / 4); ``{subject}`` holds the slot ("the [MASK] student")."""

SEARCH_TEMPLATES: tuple[str, ...] = (
    "On Sunday, {subject} was bored and read a book.",
    "During the break, {subject} was thirsty and bought a drink.",
    "In the afternoon, {subject} wanted a break and took a walk.",
    "Last week, {subject} admitted being nervous.",
    "After lunch, {subject} smiled at the idea.",
    "Yesterday, {subject} was hungry and ordered a sandwich.",
    "This morning, {subject} came in late.",
    "In the evening, {subject} called a friend.",
)
"""Frames of the ``"search"`` split (neutral-context rows and controls)."""

REPORT_TEMPLATES: tuple[str, ...] = (
    "On Friday, {subject} was tired and went home early.",
    "At the meeting, {subject} was quiet.",
    "Later that day, {subject} admitted being worried.",
    "At the party, {subject} laughed at the joke.",
    "On Monday, {subject} announced a plan to retire.",
    "At the end of the day, {subject} was happy.",
    "Today, {subject} stayed late at work.",
    "Last month, {subject} missed the bus and walked to work.",
)
"""Frames of the ``"report"`` split; disjoint from the search and training frames."""

DETERMINERS = ("the", "my", "our", "their")
"""Determiners before a training row's slot (evaluation rows use ``the``)."""

EVALUATION_TEMPLATES = {"search": SEARCH_TEMPLATES, "report": REPORT_TEMPLATES}


def _terms(feature: str | GroupTerms) -> GroupTerms:
    return feature if isinstance(feature, GroupTerms) else group_terms(feature)


def group_feature(feature: str | GroupTerms) -> Feature:
    """The `gradiend_peft.data.Feature` of ``"race"`` or ``"religion"``: its three classes with all their words (its
    pair is the first two classes; `pair_feature` sets another)."""
    terms = _terms(feature)
    return Feature(classes={c: list(words) for c, words in terms.classes.items()}, pair=tuple(list(terms.classes)[:2]),
                   name=terms.name)


def _check_pair(terms: GroupTerms, pair: Sequence[str]) -> tuple[str, str]:
    return pairs_of_classes(group_feature(terms), [tuple(pair)])[0]


def _check_evaluation_split(split: str) -> str:
    if split not in EVALUATION_TEMPLATES:
        raise ValueError(f"split must be 'search' or 'report'; got {split!r}.")
    return split


def _row(labels: Feature, text: str, factual: tuple[str, str], alternative: tuple[str, str], split: str,
         **extra: Any) -> dict[str, Any]:
    return {"text": text, "factual": factual[1], "alternative": alternative[1], "factual_class": factual[0],
            "alternative_class": alternative[0], "label": labels.label_of(factual[0]), "split": split, **extra}


def training_rows(feature: str | GroupTerms, pair: Sequence[str], *, seed: int = 0) -> datasets.DatasetDict:
    """A pair's training rows: every frame of a split with every person noun of that split, once per class.

    Args:
        feature: ``"race"`` or ``"religion"`` (or its `GroupTerms`).
        pair: two of its classes, e.g. ``("Black", "White")``; the first is labelled ``+1``.
        seed (`int`, *optional*, defaults to ``0``): draws each text's determiner and the order of the rows.

    Returns:
        A `datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in the columns of
        `gradiend_peft.data.PAIR_COLUMNS` (384 / 32 / 32 rows, half per class); the splits share no frame and no noun.

    Raises:
        ValueError: for an unknown feature or a pair that is not two different classes of it.
    """
    import datasets

    terms = _terms(feature)
    pair = _check_pair(terms, pair)
    labels = pair_feature(group_feature(terms), pair)
    rng = random.Random(seed)
    words = [(c, terms.slot_word(c)) for c in pair]
    splits = {}
    for split in SPLITS:
        rows = []
        for template in TRAIN_TEMPLATES[split]:
            for noun in PERSON_NOUNS[split]:
                text = fill(template, f"{rng.choice(DETERMINERS)} [MASK] {noun}")
                rows += [_row(labels, text, words[0], words[1], split), _row(labels, text, words[1], words[0], split)]
        rng.shuffle(rows)
        splits[split] = to_dataset(rows, PAIR_COLUMNS)
    return datasets.DatasetDict(splits)


def neutral_context_rows(feature: str | GroupTerms, pair: Sequence[str], split: str = "search", *,
                         max_rows: int | None = None, seed: int = 0) -> datasets.Dataset:
    """Rows whose context leaves the class open, for the rewrite search (``"search"``) and the report (``"report"``).

    Every frame of the split with every person noun of the split ("Last week, the [MASK] engineer admitted being
    nervous."); the factual class alternates between the pair's two classes.

    Args:
        feature: ``"race"`` or ``"religion"`` (or its `GroupTerms`).
        pair: two of its classes.
        split (`str`, *optional*, defaults to ``"search"``): ``"search"`` or ``"report"``.
        max_rows (`int`, *optional*): keep at most this many rows (a random subset, as many per class).
        seed (`int`, *optional*, defaults to ``0``): orders the rows and draws the subset.

    Returns:
        A `datasets.Dataset` with the columns of `gradiend_peft.data.PAIR_COLUMNS` plus ``template`` (e.g.
        ``"search-03"``) and ``noun``; 48 rows per split without ``max_rows``.

    Raises:
        ValueError: for an unknown feature, split or pair, or ``max_rows`` below 2.
    """
    terms = _terms(feature)
    pair = _check_pair(terms, pair)
    _check_evaluation_split(split)
    if max_rows is not None and max_rows < 2:
        raise ValueError(f"max_rows must be at least 2 (one row per class) or None; got {max_rows}.")
    labels = pair_feature(group_feature(terms), pair)
    words = [(c, terms.slot_word(c)) for c in pair]
    by_class: list[list[dict[str, Any]]] = [[], []]
    k = 0
    for t, template in enumerate(EVALUATION_TEMPLATES[split], start=1):
        for noun in PERSON_NOUNS[split]:
            side = k % 2
            k += 1
            by_class[side].append(_row(labels, fill(template, f"the [MASK] {noun}"), words[side], words[1 - side],
                                       split, template=f"{split}-{t:02d}", noun=noun))
    return _subset(by_class, max_rows, seed, PAIR_COLUMNS + ("template", "noun"))


def _subset(by_class: list[list[dict[str, Any]]], max_rows: int | None, seed: int,
            columns: Sequence[str]) -> datasets.Dataset:
    rng = random.Random(seed)
    per_class = min(len(rows) for rows in by_class)
    if max_rows is not None:
        per_class = min(per_class, max_rows // 2)
    kept = []
    for rows in by_class:
        rows = list(rows)
        rng.shuffle(rows)
        kept += rows[:per_class]
    rng.shuffle(kept)
    return to_dataset(kept, columns)


def context_controls(feature: str | GroupTerms, pair: Sequence[str], split: str = "search", *,
                     max_rows: int | None = None, seed: int = 0) -> datasets.Dataset:
    """Rows in the split's frames whose subject's relative clause decides the class, for the control guard.

    "Yesterday, the pilot, who reads the Quran every day and is [MASK], was hungry and ordered a sandwich." ->
    ``Muslim``; race: "... who comes from Japan and is [MASK], ..." -> ``Asian`` (the classes' `control_words`). Every
    cue of each of the pair's classes in every frame, with a person noun of the split drawn at random.

    Args:
        feature: ``"race"`` or ``"religion"`` (or its `GroupTerms`).
        pair: two of its classes.
        split (`str`, *optional*, defaults to ``"search"``): ``"search"`` or ``"report"``.
        max_rows (`int`, *optional*): keep at most this many rows (a random subset, as many per class).
        seed (`int`, *optional*, defaults to ``0``): draws the nouns, the subset and the order.

    Returns:
        A `datasets.Dataset` with the columns of `gradiend_peft.data.PAIR_COLUMNS` plus ``template`` and ``cue`` (the
        clause that decides the class).

    Raises:
        ValueError: for an unknown feature, split or pair, or ``max_rows`` below 2.
    """
    terms = _terms(feature)
    pair = _check_pair(terms, pair)
    _check_evaluation_split(split)
    if max_rows is not None and max_rows < 2:
        raise ValueError(f"max_rows must be at least 2 (one row per class) or None; got {max_rows}.")
    labels = pair_feature(group_feature(terms), pair)
    rng = random.Random(f"controls-{seed}")
    words = [(c, terms.control_words[c]) for c in pair]
    by_class: list[list[dict[str, Any]]] = [[], []]
    for side, (class_name, _) in enumerate(words):
        for cue in terms.control_cues[split][class_name]:
            for t, template in enumerate(EVALUATION_TEMPLATES[split], start=1):
                subject = f"the {rng.choice(PERSON_NOUNS[split])}, who {cue} and is [MASK],"
                by_class[side].append(_row(labels, fill(template, subject), words[side], words[1 - side], split,
                                           template=f"{split}-{t:02d}", cue=cue))
    return _subset(by_class, max_rows, seed, PAIR_COLUMNS + ("template", "cue"))


def search_classes(feature: str | GroupTerms, pair: Sequence[str]) -> dict[str, list[str]]:
    """``{class: words}`` of the pair's two classes, every word of each (the classes a search measures)."""
    terms = _terms(feature)
    return {c: list(terms.classes[c]) for c in _check_pair(terms, pair)}
