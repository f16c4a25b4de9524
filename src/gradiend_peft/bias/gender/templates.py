"""Template rows for he/she: neutral-context evaluation rows and context-decided controls.

Rows mined from real text mostly have a context that decides the pronoun ("My mother said that [MASK]
..."), so balancing them pushes against the context. The rows here separate the two cases:

- :func:`neutral_context_rows`: an occupation in a sentence that does not decide the pronoun ("On Friday,
  the nurse was tired, so [MASK] went home early."). The *factual* is the occupation's stereotypical pronoun (BLS share of
  women >= 50%: she, else he; see :mod:`~gradiend_peft.bias.gender.occupations`), the *alternative* the other
  one, so a model's probabilities by class read as "stereotypical vs anti-stereotypical".
- :func:`context_controls`: the same frames with a subject that decides the pronoun: a gendered noun
  ("my mother", "the king") or a first name that is clearly one gender ("Linda", "Douglas").

Every row has one ``[MASK]`` slot for a subject pronoun, placed where a causal LM predicts the pronoun from
the text before it (after "so", "because", "admitted that", a subordinate clause, or a full stop). The
subject never opens the text: a lead-in ("On Friday, ...") comes first, because a causal LM whose
tokenizer adds no BOS token (SmolLM2) barely uses a text-initial subject (measured in the docs page
"Template rows for he/she").

Two evaluation splits, ``"search"`` (rows the rewrite search may look at) and ``"report"`` (rows kept for
the reported numbers), share no template (:data:`SEARCH_TEMPLATES` and :data:`REPORT_TEMPLATES`, 10
each), no occupation (:func:`~gradiend_peft.bias.gender.occupations.occupation_split`), no gendered noun and no
first name; both are fixed by ``split_seed`` (same value everywhere) and independent of ``seed``, which
only draws and orders rows. The training rows of :mod:`~gradiend_peft.bias.gender.training_rows` use a third
template set, :data:`TRAIN_TEMPLATES`, and first names that no control uses.

Occupations: WinoGender (Rudinger et al., NAACL 2018, rudinger/winogender-schemas, MIT) and WinoBias
(Zhao et al., NAACL 2018, uclanlp/corefBias, MIT). First names: the US Census 1990 lists of the PyPI
package ``names`` (MIT); see ``gradiend_peft/corpora/README.md``.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...data.corpora import _folder, _manifest
from .definitional import SURNAMES, definitional_nouns
from ...data.feature import MASK_PLACEHOLDER, Feature, normalize_word
from ...data.mining import PAIR_COLUMNS, as_feature
from .occupations import check_evaluation_split, occupation_split

if TYPE_CHECKING:
    import datasets

__all__ = [
    "REPORT_TEMPLATES",
    "SEARCH_TEMPLATES",
    "TRAIN_TEMPLATES",
    "clear_names",
    "context_controls",
    "neutral_context_rows",
    "pronoun_classes",
]

SEARCH_TEMPLATES: Mapping[str, str] = {
    "search-01": "On Sunday, {subject} was bored, so [MASK] read a book.",
    "search-02": "During the break, {subject} was thirsty, so [MASK] bought a drink.",
    "search-03": "In the afternoon, {subject} wanted a break, so [MASK] took a walk.",
    "search-04": "Last week, {subject} admitted that [MASK] was nervous.",
    "search-05": "After lunch, {subject} smiled because [MASK] liked the idea.",
    "search-06": "Yesterday, {subject} was hungry, so [MASK] ordered a sandwich.",
    "search-07": "This morning, {subject} came in late. [MASK] apologized to the team.",
    "search-08": "In the morning, {subject} called the office because [MASK] felt sick.",
    "search-09": "Last night, {subject} worked late because [MASK] had a deadline.",
    "search-10": "While {subject} was driving home, [MASK] listened to the radio.",
}
"""Frames of the ``"search"`` split; ``{subject}`` is e.g. "the nurse", ``{Subject}`` the same capitalised."""

REPORT_TEMPLATES: Mapping[str, str] = {
    "report-01": "This morning, {subject} felt unwell, so [MASK] took the day off.",
    "report-02": "On Friday, {subject} was tired, so [MASK] went home early.",
    "report-03": "At the meeting, {subject} was quiet because [MASK] was thinking.",
    "report-04": "Later that day, {subject} admitted that [MASK] was worried.",
    "report-05": "At the party, {subject} laughed because [MASK] found the joke funny.",
    "report-06": "On Monday, {subject} announced that [MASK] was retiring.",
    "report-07": "At the end of the day, {subject} was happy because [MASK] had finished early.",
    "report-08": "Today, {subject} stayed late because [MASK] had a lot to do.",
    "report-09": "As soon as {subject} sat down, [MASK] opened the laptop.",
    "report-10": "Last week, {subject} missed the bus. [MASK] had to walk to work.",
}
"""Frames of the ``"report"`` split; disjoint from :data:`SEARCH_TEMPLATES` and :data:`TRAIN_TEMPLATES`."""

TRAIN_TEMPLATES: Mapping[str, str] = {
    "train-01": "Last Saturday, {subject} said that [MASK] would come.",
    "train-02": "This afternoon, {subject} told everyone that [MASK] was happy.",
    "train-03": "Last night, {subject} went home because [MASK] was tired.",
    "train-04": "When {subject} woke up, [MASK] felt much better.",
    "train-05": "In the kitchen, {subject} opened the fridge, and [MASK] took out the milk.",
    "train-06": "On Wednesday, {subject} knew that [MASK] had to leave.",
    "train-07": "Before the game, {subject} hoped that [MASK] would win.",
    "train-08": "After dinner, {subject} wrote a letter, and [MASK] sent it the next day.",
    "train-09": "Yesterday afternoon, {subject} said that [MASK] liked the new park.",
    "train-10": "At the door, {subject} checked that [MASK] had the keys.",
    "train-11": "This evening, {subject} came in late. [MASK] apologized to everyone.",
    "train-12": "At the cinema, {subject} laughed because [MASK] found the film funny.",
    "train-13": "At breakfast, {subject} smiled when [MASK] heard the news.",
    "train-14": "If {subject} is hungry, [MASK] will cook pasta.",
    "train-15": "Before the race, {subject} believed that [MASK] could win.",
    "train-16": "In the garden, {subject} was reading, so [MASK] did not hear the phone.",
    "train-17": "After the game, {subject} said [MASK] was proud of the team.",
    "train-18": "Last spring, {subject} decided that [MASK] would travel by train.",
    "train-19": "In class, {subject} asked whether [MASK] could borrow a pen.",
    "train-20": "For the picnic, {subject} said [MASK] would bring dessert.",
    "train-21": "On the way home, {subject} was late again, and [MASK] knew it.",
    "train-22": "At the station, {subject} explained why [MASK] had changed plans.",
    "train-23": "After the storm, {subject} was relieved because [MASK] was safe.",
    "train-24": "Once again, {subject} was sleepy, so [MASK] made some tea.",
}
"""Frames for training rows (:func:`~gradiend_peft.bias.gender.name_rows`, :func:`~gradiend_peft.bias.gender.occupation_rows`)."""

NAME_DOMINANCE = 20.0
"""A first name on both census lists counts as one gender when its share there is at least this many times
its share on the other list (Mary: 2.629% of women, 0.009% of men); otherwise it is left out (Jean, Kelly)."""

CONTROL_NAMES_PER_SPLIT = 50
"""Per gender and evaluation split, the first names of the controls: the 100 most frequent clear names of a
gender are drawn into the two splits; training rows use only less frequent names."""

ROW_COLUMNS = PAIR_COLUMNS + ("template",)


def pronoun_classes(feature: Feature | Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The feature's class of ``she`` and of ``he``: ``{"female": class, "male": class}``.

    Args:
        feature: a :class:`~gradiend_peft.data.Feature` or a ``{class: words}`` mapping.

    Returns:
        The two class names, keyed ``"female"`` and ``"male"``.

    Raises:
        ValueError: unless ``he`` and ``she`` are words of the two different classes of ``feature.pair``.
    """
    feature = as_feature(feature)
    found = {}
    for gender, pronoun in (("female", "she"), ("male", "he")):
        found[gender] = next((c for c, words in feature.classes.items() if pronoun in map(normalize_word, words)), None)
    if found["female"] is None or found["male"] is None or found["female"] == found["male"] or set(found.values()) != set(feature.pair):
        raise ValueError(
            "template rows need a feature whose two paired classes hold 'he' and 'she' respectively, e.g. "
            f"Feature(classes={{'M': ['he'], 'F': ['she']}}); got classes {dict(feature.classes)} with pair "
            f"{feature.pair} ('she' in {found['female']!r}, 'he' in {found['male']!r})."
        )
    return found


def fill(template: str, subject: str) -> str:
    """``template`` with ``{subject}`` (and ``{Subject}``, capitalised) replaced by ``subject``."""
    return template.format(subject=subject, Subject=subject[:1].upper() + subject[1:])


def make_row(feature: Feature, classes: Mapping[str, str], text: str, gender: str, split: str) -> dict[str, Any]:
    """A row of :data:`~gradiend_peft.data.PAIR_COLUMNS` for ``text`` whose slot takes the pronoun of ``gender``.

    The pronouns are capitalised where the slot starts a sentence.
    """
    if text.count(MASK_PLACEHOLDER) != 1:
        raise ValueError(f"a template row needs exactly one {MASK_PLACEHOLDER!r}; got {text!r}.")
    prefix = text.split(MASK_PLACEHOLDER)[0].rstrip()
    capital = not prefix or prefix.endswith((".", "!", "?"))
    other = "male" if gender == "female" else "female"
    pronoun = {"female": "she", "male": "he"}

    def cased(word: str) -> str:
        return word.capitalize() if capital else word

    return {
        "text": text,
        "factual": cased(pronoun[gender]),
        "alternative": cased(pronoun[other]),
        "factual_class": classes[gender],
        "alternative_class": classes[other],
        "label": feature.label_of(classes[gender]),
        "split": split,
    }


def to_dataset(rows: list[dict[str, Any]], columns: Sequence[str]) -> datasets.Dataset:
    """``rows`` as a :class:`datasets.Dataset`: ``label`` float32 (as mined rows), ``pct_female`` float64, others strings."""
    import datasets

    dtypes = {"label": "float32", "pct_female": "float64"}
    schema = datasets.Features({c: datasets.Value(dtypes.get(c, "string")) for c in columns})
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=schema)


def balanced(by_class: Mapping[str, list], per_class: int | None, rng: random.Random) -> list:
    """At most ``per_class`` (default: the smallest class's count) random items of each class, shuffled together."""
    n = min(len(v) for v in by_class.values())
    if per_class is not None:
        n = min(n, per_class)
    kept = []
    for items in by_class.values():
        items = list(items)
        rng.shuffle(items)
        kept.extend(items[:n])
    rng.shuffle(kept)
    return kept


def _templates(split: str) -> Mapping[str, str]:
    return SEARCH_TEMPLATES if check_evaluation_split(split) == "search" else REPORT_TEMPLATES


def neutral_context_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    split: str = "search",
    *,
    max_rows: int | None = None,
    balance: bool = True,
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.Dataset:
    """Occupation rows whose context leaves the pronoun open; the factual is the stereotypical pronoun.

    Every occupation of the split in every template of the split ("The nurse said that [MASK] would be late.").

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she`` (e.g. ``{"M": ["he"], "F": ["she"]}``).
        split (`str`, *optional*, defaults to ``"search"``): ``"search"`` or ``"report"``; they share no
            template and no occupation.
        max_rows (`int`, *optional*): keep at most this many rows (a random subset drawn with ``seed``;
            half per class with ``balance``).
        balance (`bool`, *optional*, defaults to ``True``): as many she- as he-stereotyped occupations: the
            larger side drops its occupations whose share is nearest 50% (the same rows for every ``seed``).
        seed (`int`, *optional*, defaults to ``0``): draws the subsets and orders the rows.
        split_seed (`int`, *optional*, defaults to ``0``): fixes which occupations belong to which split.

    Returns:
        A :class:`datasets.Dataset` with the columns of :data:`~gradiend_peft.data.PAIR_COLUMNS` (``split`` is
        ``"search"``/``"report"``) plus ``template`` (its id, e.g. ``"search-03"``), ``noun``, ``stereotype``
        (the class of the stereotypical pronoun, always equal to ``factual_class``) and ``pct_female``.

    Raises:
        ValueError: for a feature without ``he`` and ``she`` in its two paired classes, or an unknown split.
    """
    feature = as_feature(feature)
    classes = pronoun_classes(feature)
    if max_rows is not None and max_rows < 2:
        raise ValueError(f"max_rows must be at least 2 (one row per class) or None; got {max_rows}.")
    rng = random.Random(seed)
    occupations = occupation_split(split, split_seed=split_seed)
    if balance:
        # the larger side loses its least stereotyped occupations (share nearest 50%), whatever the seed
        sides = {g: [o for o in occupations if o.stereotype == g] for g in ("female", "male")}
        n = min(len(s) for s in sides.values())
        keep = {o.noun for s in sides.values() for o in sorted(s, key=lambda o: -abs(o.pct_female - 50.0))[:n]}
        occupations = [o for o in occupations if o.noun in keep]
    by_class: dict[str, list[dict[str, Any]]] = {"female": [], "male": []}
    for occupation in occupations:
        gender = occupation.stereotype
        for template_id, template in _templates(split).items():
            row = make_row(feature, classes, fill(template, f"the {occupation.noun}"), gender, split)
            row.update(template=template_id, noun=occupation.noun, stereotype=classes[gender],
                       pct_female=occupation.pct_female)
            by_class[gender].append(row)
    if balance:
        rows = balanced(by_class, None if max_rows is None else max_rows // 2, rng)
    else:
        rows = by_class["female"] + by_class["male"]
        rng.shuffle(rows)
        rows = rows[:max_rows]
    columns = ROW_COLUMNS + ("noun", "stereotype", "pct_female")
    return to_dataset(rows, columns)


@functools.lru_cache(maxsize=1)
def _census() -> dict[str, dict[str, float]]:
    info = _manifest()["names"]
    with _folder().joinpath(info["file"]).open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as handle:
        data = json.load(handle)
    return {kind: {name: float(pct) for name, pct in rows} for kind, rows in data.items()}


@functools.lru_cache(maxsize=1)
def _clear_names() -> dict[str, tuple[str, ...]]:
    census = _census()
    result = {}
    for kind, other in (("female", "male"), ("male", "female")):
        result[kind] = tuple(
            name for name, pct in census[kind].items()
            if name not in census[other] or pct >= NAME_DOMINANCE * census[other][name]
        )
    return result


def clear_names(kind: str) -> list[str]:
    """First names that are clearly one gender, most frequent first (US Census 1990).

    A name on both census lists is kept for the gender whose share is at least :data:`NAME_DOMINANCE` times
    the other's, and left out otherwise.

    Args:
        kind: ``"female"`` or ``"male"``.

    Returns:
        The names, e.g. ``["Mary", "Patricia", ...]`` for ``"female"``.

    Raises:
        ValueError: for another kind.
    """
    if kind not in ("female", "male"):
        raise ValueError(f"kind must be 'female' or 'male'; got {kind!r}.")
    return list(_clear_names()[kind])


def control_names(kind: str, split: str, split_seed: int = 0) -> list[str]:
    """The first names of one gender that the controls of ``split`` use (disjoint across splits)."""
    check_evaluation_split(split)
    pool = clear_names(kind)[: 2 * CONTROL_NAMES_PER_SPLIT]
    random.Random(f"names-{kind}-{split_seed}").shuffle(pool)
    half = CONTROL_NAMES_PER_SPLIT
    return sorted(pool[:half] if split == "search" else pool[half:])


def context_controls(
    feature: Feature | Mapping[str, Sequence[str]],
    split: str = "search",
    *,
    count: int | None = 200,
    names_share: float = 0.25,
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.Dataset:
    """Rows whose subject decides the pronoun (definitional nouns and first names), for the control guard.

    The frames are the split's neutral templates (those of :func:`neutral_context_rows`), so a control differs from
    a neutral-context row only in its subject: "On Sunday, my father was bored, so [MASK] read a book." beside "On
    Sunday, the nurse was bored, so [MASK] read a book.". The subjects are the split's pool of
    :data:`~gradiend_peft.bias.gender.definitional.DEFINITIONAL_NOUNS` (kinship nouns, titles, gendered role nouns and
    person nouns; :func:`~gradiend_peft.bias.gender.definitional.definitional_nouns`) and 50 first names per gender
    (:func:`clear_names`); no noun and no name is in both splits, nor in the nouns of the ``"train"`` pool.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she``.
        split (`str`, *optional*, defaults to ``"search"``): ``"search"`` or ``"report"``.
        count (`int`, *optional*, defaults to ``200``): the number of rows, half per class (an odd count is
            rounded down); ``None``: every subject in every template.
        names_share (`float`, *optional*, defaults to ``0.25``): the share of each class's rows with a first name
            as the subject (the rest have a definitional noun); with ``count=None`` every name is used, unless
            ``names_share`` is 0 (nouns only).
        seed (`int`, *optional*, defaults to ``0``): draws the (subject, template) combinations, the surnames of the
            titles that take one, and the order.
        split_seed (`int`, *optional*, defaults to ``0``): fixes which nouns and names belong to which split.

    Returns:
        A :class:`datasets.Dataset` with the columns of :data:`~gradiend_peft.data.PAIR_COLUMNS` plus ``template``
        (id), ``cue`` (the word that decides the class, e.g. ``"mother"`` or ``"Linda"``) and ``cue_kind``
        (``"kinship"``, ``"title"``, ``"role"``, ``"person"`` or ``"name"``).

    Raises:
        ValueError: for a feature without ``he`` and ``she``, an unknown split, a ``count`` below 2 or above what
            the split holds, or a ``names_share`` outside [0, 1].
    """
    feature = as_feature(feature)
    classes = pronoun_classes(feature)
    if not 0.0 <= names_share <= 1.0:
        raise ValueError(f"names_share must be between 0 and 1; got {names_share}.")
    rng = random.Random(seed)
    templates = _templates(split)
    nouns = definitional_nouns(check_evaluation_split(split), split_seed)
    rows = []
    for gender in ("female", "male"):
        noun_combos = [(noun.subject(gender, rng.choice(SURNAMES)), getattr(noun, gender), noun.kind, t)
                       for noun in nouns for t in templates]
        name_combos = [(name, name, "name", t) for name in control_names(gender, split, split_seed) for t in templates]
        rng.shuffle(noun_combos)
        rng.shuffle(name_combos)
        if count is None and names_share == 0.0:
            name_combos = []
        if count is not None:
            per_class = count // 2
            n_names = round(per_class * names_share)
            if per_class < 1 or n_names > len(name_combos) or per_class - n_names > len(noun_combos):
                raise ValueError(f"count must be between 2 and {2 * len(noun_combos) + 2 * len(name_combos)} with "
                                 f"names_share={names_share} (what the {split!r} split holds) or None; got {count}.")
            noun_combos, name_combos = noun_combos[: per_class - n_names], name_combos[:n_names]
        for subject, cue, kind, template_id in noun_combos + name_combos:
            row = make_row(feature, classes, fill(templates[template_id], subject), gender, split)
            row.update(template=template_id, cue=cue, cue_kind=kind)
            rows.append(row)
    rng.shuffle(rows)
    return to_dataset(rows, ROW_COLUMNS + ("cue", "cue_kind"))
