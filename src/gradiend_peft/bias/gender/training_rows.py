"""Template training rows for he/she: first names (the GRADIEND papers' data) and stereotyped occupations.

Both functions return a :class:`datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in
exactly the columns of :func:`~gradiend_peft.data.mine_pairs` (:data:`~gradiend_peft.data.PAIR_COLUMNS`), so
they can replace or join mined rows. Their frames are :data:`~gradiend_peft.bias.gender.templates.TRAIN_TEMPLATES`
(24), which share no template with the evaluation splits.

- :func:`name_rows`: "{name} said that [MASK] would come." with the pronoun of the name's gender as the
  factual. Names come from the US Census 1990 lists (:func:`~gradiend_peft.bias.gender.templates.clear_names`),
  skipping the 100 most frequent of each gender, which the controls use; validation and test hold out
  names that train never sees.
- :func:`occupation_rows`: "The nurse said that [MASK] would come." with the stereotypical pronoun, for
  occupations of the ``"search"`` split only (never a ``"report"`` noun); validation and test hold out
  occupations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...data.feature import Feature
from ...data.mining import PAIR_COLUMNS, SPLITS, as_feature, check_split_ratios
from .occupations import occupation_split
from .templates import CONTROL_NAMES_PER_SPLIT, TRAIN_TEMPLATES, clear_names, fill, make_row, pronoun_classes, to_dataset

if TYPE_CHECKING:
    import datasets

__all__ = ["definitional_rows", "name_rows", "occupation_rows"]


def _cut(items: list, ratios: tuple[float, float, float]) -> dict[str, list]:
    """``items`` cut into the three splits; a split with a positive ratio gets at least one item when there are 3+."""
    n = len(items)
    sizes = [round(n * r) for r in ratios[1:]]
    if n >= 3:
        sizes = [max(1, s) if r > 0 else s for s, r in zip(sizes, ratios[1:])]
    n_val, n_test = sizes
    n_train = n - n_val - n_test
    return {"train": items[:n_train], "validation": items[n_train : n_train + n_val], "test": items[n_train + n_val :]}


def _dataset_dict(by_split: Mapping[str, list[dict[str, Any]]]) -> datasets.DatasetDict:
    import datasets

    return datasets.DatasetDict({s: to_dataset(by_split[s], PAIR_COLUMNS) for s in SPLITS})


def name_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    *,
    names_per_class: int = 300,
    rows_per_name: int = 4,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> datasets.DatasetDict:
    """Training rows with a first name as the subject and the pronoun of its gender as the factual.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she`` (e.g. ``{"M": ["he"], "F": ["she"]}``).
        names_per_class (`int`, *optional*, defaults to ``300``): names per gender, the most frequent after the
            100 the controls use (at most 926: the clear male names left).
        rows_per_name (`int`, *optional*, defaults to ``4``): rows per name, each in a different template drawn
            at random from the 24 training templates.
        split_ratios (`Sequence[float]`, *optional*, defaults to ``(0.8, 0.1, 0.1)``): the fractions of names
            (per gender) in train, validation and test. A name's rows all go to one split.
        seed (`int`, *optional*, defaults to ``0``): draws the name split, the templates and the order.

    Returns:
        A :class:`datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in the columns of
        :data:`~gradiend_peft.data.PAIR_COLUMNS`; every split has as many rows per class.
        With the defaults: 1,920 / 240 / 240 rows.

    Raises:
        ValueError: for a feature without ``he`` and ``she``, too many names, or ``rows_per_name`` outside
            1..24.

    Examples:
        >>> rows = name_rows({"M": ["he"], "F": ["she"]}, names_per_class=20, rows_per_name=2)
        >>> rows["train"][0]["text"]  # doctest: +SKIP
        'When Gloria woke up, [MASK] felt much better.'
    """
    feature = as_feature(feature)
    classes = pronoun_classes(feature)
    ratios = check_split_ratios(split_ratios)
    if not 1 <= rows_per_name <= len(TRAIN_TEMPLATES):
        raise ValueError(f"rows_per_name must be between 1 and {len(TRAIN_TEMPLATES)}; got {rows_per_name}.")
    pools = {kind: clear_names(kind)[2 * CONTROL_NAMES_PER_SPLIT :] for kind in ("female", "male")}
    limit = min(len(p) for p in pools.values())
    if not 1 <= names_per_class <= limit:
        raise ValueError(f"names_per_class must be between 1 and {limit} (the clear names left after the controls'); got {names_per_class}.")
    rng = random.Random(seed)
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for gender, pool in pools.items():
        names = pool[:names_per_class]
        rng.shuffle(names)
        for split, chosen in _cut(names, ratios).items():
            for name in chosen:
                for template_id in rng.sample(sorted(TRAIN_TEMPLATES), rows_per_name):
                    by_split[split].append(make_row(feature, classes, fill(TRAIN_TEMPLATES[template_id], name), gender, split))
    for rows in by_split.values():
        rng.shuffle(rows)
    return _dataset_dict(by_split)


def occupation_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    *,
    min_margin: float = 10.0,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.DatasetDict:
    """Training rows with a stereotyped occupation as the subject and the stereotypical pronoun as the factual.

    Every chosen occupation appears in every training template. Only occupations of the ``"search"`` split
    are used, so the ``"report"`` split's nouns and templates stay unseen.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she``.
        min_margin (`float`, *optional*, defaults to ``10.0``): keep occupations whose BLS share of women is at
            least this many points away from 50% (10: at most 40% or at least 60%).
        split_ratios (`Sequence[float]`, *optional*, defaults to ``(0.8, 0.1, 0.1)``): the fractions of
            occupations (per stereotype) in train, validation and test; a split with a positive ratio gets
            at least one occupation of each stereotype.
        seed (`int`, *optional*, defaults to ``0``): draws the occupation split, the balancing and the order.
        split_seed (`int`, *optional*, defaults to ``0``): the search/report split of the occupations; use
            the value given to :func:`~gradiend_peft.bias.gender.neutral_context_rows`.

    Returns:
        A :class:`datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in the columns of
        :data:`~gradiend_peft.data.PAIR_COLUMNS`; in each split the larger class is cut to the smaller's count.

    Raises:
        ValueError: for a feature without ``he`` and ``she``, or when ``min_margin`` leaves fewer than 3
            occupations of a stereotype.
    """
    feature = as_feature(feature)
    classes = pronoun_classes(feature)
    ratios = check_split_ratios(split_ratios)
    rng = random.Random(seed)
    chosen = [o for o in occupation_split("search", split_seed=split_seed) if abs(o.pct_female - 50.0) >= min_margin]
    per_split: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in SPLITS}
    for gender in ("female", "male"):
        nouns = [o.noun for o in chosen if o.stereotype == gender]
        if len(nouns) < 3:
            raise ValueError(
                f"min_margin={min_margin} leaves {len(nouns)} {gender}-stereotyped occupations in the search split; "
                "lower it (at least 3 are needed for train, validation and test)."
            )
        rng.shuffle(nouns)
        for split, group in _cut(nouns, ratios).items():
            per_split[split][gender] = [
                make_row(feature, classes, fill(template, f"the {noun}"), gender, split)
                for noun in group for template in TRAIN_TEMPLATES.values()
            ]
    by_split = {}
    for split, by_gender in per_split.items():
        n = min(len(rows) for rows in by_gender.values())
        kept = []
        for rows in by_gender.values():
            rng.shuffle(rows)
            kept.extend(rows[:n])
        rng.shuffle(kept)
        by_split[split] = kept
    return _dataset_dict(by_split)


def definitional_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    *,
    names_per_class: int = 100,
    rows_per_name: int = 4,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.DatasetDict:
    """Training rows whose subject's meaning decides the pronoun: the ``"train"`` pool of definitional nouns
    ("my grandfather", "the waiter", "the king"; :func:`~gradiend_peft.bias.gender.definitional.definitional_nouns`) in
    every training template, and first names in ``rows_per_name`` templates each.

    The nouns and names are those no control uses (the controls take the ``"search"`` and ``"report"`` pools and the
    100 most frequent names of each gender), so an adapter trained on these rows, e.g. to keep its directions out of a
    debiasing edit (`gradiend_peft.editing.project_out`), never saw a control's subject.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she``.
        names_per_class (`int`, *optional*, defaults to ``100``): first names per gender (0: nouns only), the most
            frequent after the 100 the controls use.
        rows_per_name (`int`, *optional*, defaults to ``4``): rows per name, each in a different training template.
        split_ratios (`Sequence[float]`, *optional*, defaults to ``(0.8, 0.1, 0.1)``): the fractions of subjects
            (per gender and kind) in train, validation and test; a subject's rows all go to one split.
        seed (`int`, *optional*, defaults to ``0``): draws the subject split, the templates and the order.
        split_seed (`int`, *optional*, defaults to ``0``): the deal of the definitional nouns into pools.

    Returns:
        A :class:`datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in the columns of
        :data:`~gradiend_peft.data.PAIR_COLUMNS`, as many rows per class in each split.

    Raises:
        ValueError: for a feature without ``he`` and ``she``, too many names, or ``rows_per_name`` outside
            1..24.
    """
    from .definitional import SURNAMES, definitional_nouns

    feature = as_feature(feature)
    classes = pronoun_classes(feature)
    ratios = check_split_ratios(split_ratios)
    if not 1 <= rows_per_name <= len(TRAIN_TEMPLATES):
        raise ValueError(f"rows_per_name must be between 1 and {len(TRAIN_TEMPLATES)}; got {rows_per_name}.")
    pools = {kind: clear_names(kind)[2 * CONTROL_NAMES_PER_SPLIT :] for kind in ("female", "male")}
    limit = min(len(p) for p in pools.values())
    if not 0 <= names_per_class <= limit:
        raise ValueError(f"names_per_class must be between 0 and {limit}; got {names_per_class}.")
    rng = random.Random(seed)
    nouns = definitional_nouns("train", split_seed)
    rng.shuffle(nouns)  # a pair's two forms go to the same split
    per_split: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"female": [], "male": []} for s in SPLITS}
    for gender in ("female", "male"):
        for split, group in _cut(nouns, ratios).items():
            for noun in group:
                for template in TRAIN_TEMPLATES.values():
                    subject = noun.subject(gender, rng.choice(SURNAMES))
                    per_split[split][gender].append(make_row(feature, classes, fill(template, subject), gender, split))
        names = pools[gender][:names_per_class]
        rng.shuffle(names)
        for split, chosen in _cut(names, ratios).items() if names else ():
            for name in chosen:
                for template_id in rng.sample(sorted(TRAIN_TEMPLATES), rows_per_name):
                    per_split[split][gender].append(
                        make_row(feature, classes, fill(TRAIN_TEMPLATES[template_id], name), gender, split))
    by_split = {}
    for split, by_gender in per_split.items():
        n = min(len(rows) for rows in by_gender.values())
        kept = [row for rows in by_gender.values() for row in rows[:n]]
        rng.shuffle(kept)
        by_split[split] = kept
    return _dataset_dict(by_split)
