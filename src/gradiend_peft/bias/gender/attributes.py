"""Attribute rows for he/she: a gendered subject, then an attribute word stereotyped for one gender.

The occupation rows of :func:`~gradiend_peft.bias.gender.occupation_rows` train one direction of gender bias: which
pronoun follows an occupation ("The nurse said that [MASK]"). The field's benchmarks mostly score the other
direction: which *attribute* follows a gendered word (StereoSet: "My sister is very [caring/ambitious]"). An attribute
row has that shape:

    text "On Monday, my sister seemed very [MASK]."   factual "emotional"  alternative "ambitious"  class F
    text "On Monday, my brother seemed very [MASK]."  factual "ambitious"  alternative "emotional"  class M

The *factual* is the attribute stereotyped for the subject's gender, the *alternative* one stereotyped for the other
gender, and the rows come in gender-swapped pairs (same frame, same two attributes, the two forms of one
definitional noun). Over such a pair, the frame's and the words' own preferences cancel: what is left in the mean of
``log P(factual) - log P(alternative)`` is the gender x attribute interaction, which is what a stereotype score
counts. For GRADIEND, the decoder bias learned from these rows is the mean of ``grad L(factual) - grad L(alternative)``
over both genders, the same interaction in gradient form.

Three kinds of attribute with frames that fit them: ``trait`` (adjectives: "is very [MASK]"), ``role`` (occupations
after "a": "works as a [MASK]"; consonant-initial words only, so the article fits) and ``interest`` ("is interested in
[MASK]"). The words, the frames and the subjects are each dealt into three disjoint pools: ``"train"`` for training
rows (:func:`attribute_rows`), ``"search"`` for the rows a rewrite search chooses on and ``"report"`` for the rows
reported (:func:`attribute_evaluation_rows`). No word, frame or subject is in two pools.

Sources (none of them a benchmark's data): the stereotype-prone attribute words of Liang et al. (ACL 2021) as
shipped in Ewanwong/debias_NLG ``data/neutral.txt`` (MIT); the WEAT career/family, math/arts and science/arts lists
(Caliskan et al., Science 2017) as shipped in the ``wefe`` package (MIT); Bolukbasi et al.'s professions with their
stereotype scores (NeurIPS 2016, tolga-b/debiaswe ``data/professions.json``, MIT). The words below were selected from
those lists (single words, the gender they lean to taken from the source) and completed with common adjectives of the
same kind; every choice is listed here, nothing is read at run time.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .definitional import DEFINITIONAL_SPLITS, definitional_nouns
from ...data.feature import Feature
from ...data.mining import PAIR_COLUMNS, SPLITS, as_feature, check_split_ratios
from .templates import fill, pronoun_classes, to_dataset

if TYPE_CHECKING:
    import datasets

__all__ = ["ATTRIBUTE_FRAMES", "ATTRIBUTE_WORDS", "attribute_evaluation_rows", "attribute_rows", "attribute_words"]

ATTRIBUTE_WORDS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "trait": {
        "female": tuple("emotional gentle sweet pretty beautiful cute lovely graceful soft passive neat nurturing weak "
                        "thin romantic jealous caring sensitive shy delicate elegant polite modest fragile tender "
                        "helpless naive obedient dependent vain innocent charming".split()),
        "male": tuple("aggressive ambitious strong muscular tall brave tough rational logical confident dominant "
                      "competitive bold assertive stubborn loud violent fearless powerful independent arrogant "
                      "athletic decisive reckless rough lazy angry clever serious".split()),
    },
    "role": {
        "female": tuple("nurse secretary librarian dancer teacher counselor maid baker clerk model singer".split()),
        "male": tuple("pilot mechanic carpenter soldier captain doctor lawyer manager programmer professor scientist "
                      "physicist mathematician sailor detective chef president politician leader warrior farmer "
                      "builder surgeon guard driver judge boss".split()),
    },
    "interest": {
        "female": tuple("cooking sewing shopping dancing yoga makeup jewelry fashion poetry art literature drama "
                        "crafting gossip parenting family children wedding knitting romance novels flowers".split()),
        "male": tuple("football rugby baseball boxing science physics chemistry math algebra calculus geometry "
                      "technology engineering business management politics driving gaming computers cars sports "
                      "hunting fishing money weapons machines".split()),
    },
}
"""Attribute words by kind and by the gender they are stereotyped for (see the module docstring for the sources)."""

ATTRIBUTE_FRAMES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "train": {
        "trait": ("{Subject} is very [MASK].", "Everyone knows that {subject} is [MASK].",
                  "People often say that {subject} is [MASK].", "At work, {subject} is usually [MASK].",
                  "Since childhood, {subject} has been [MASK].", "Most of all, {subject} is [MASK]."),
        "role": ("{Subject} works as a [MASK].", "Last year, {subject} became a [MASK].",
                 "{Subject} has always wanted to be a [MASK].", "For many years, {subject} worked as a [MASK].",
                 "After college, {subject} trained as a [MASK].", "In town, {subject} is known as a [MASK]."),
        "interest": ("{Subject} is really interested in [MASK].", "On weekends, {subject} enjoys [MASK].",
                     "{Subject} spends hours on [MASK].", "Lately, {subject} has been reading about [MASK].",
                     "More than anything, {subject} loves [MASK].", "At school, {subject} was good at [MASK]."),
    },
    "search": {
        "trait": ("My friends think that {subject} is [MASK].", "Honestly, {subject} seems really [MASK].",
                  "Back then, {subject} was quite [MASK].", "According to the neighbours, {subject} is [MASK].",
                  "Above all, {subject} is so [MASK].", "On Monday, {subject} seemed very [MASK]."),
        "role": ("These days, {subject} is employed as a [MASK].", "Before retiring, {subject} was a [MASK].",
                 "Next year, {subject} will start as a [MASK].", "For a living, {subject} is a [MASK].",
                 "Everyone expected {subject} to become a [MASK].", "In the village, {subject} worked as a [MASK]."),
        "interest": ("In the evening, {subject} likes [MASK].", "For fun, {subject} is into [MASK].",
                     "Every day, {subject} talks about [MASK].", "Recently, {subject} took a course in [MASK].",
                     "What {subject} cares about most is [MASK].", "As a hobby, {subject} does a lot of [MASK]."),
    },
    "report": {
        "trait": ("To be honest, {subject} is rather [MASK].", "Everyone agrees that {subject} is extremely [MASK].",
                  "As a teenager, {subject} was very [MASK].", "In my opinion, {subject} is too [MASK].",
                  "Lately, {subject} has become more [MASK].", "The teachers said that {subject} was [MASK]."),
        "role": ("Now, {subject} earns a living as a [MASK].", "Ten years ago, {subject} started working as a [MASK].",
                 "Without doubt, {subject} is a great [MASK].", "As a child, {subject} dreamed of being a [MASK].",
                 "In the end, {subject} became a [MASK].", "Most people know {subject} as a [MASK]."),
        "interest": ("In free time, {subject} enjoys [MASK].", "For years, {subject} has been passionate about [MASK].",
                     "At university, {subject} studied [MASK].", "Every summer, {subject} spends time on [MASK].",
                     "Nothing makes {subject} happier than [MASK].", "When young, {subject} was obsessed with [MASK]."),
    },
}
"""Frames per pool and kind; ``{subject}`` is e.g. "my sister", ``{Subject}`` the same capitalised."""

ROW_COLUMNS = PAIR_COLUMNS + ("template", "cue", "kind", "pair")


def attribute_words(split: str, kind: str, gender: str, split_seed: int = 0) -> list[str]:
    """The attribute words of one pool: each (kind, gender) list is shuffled with ``split_seed`` and dealt round-robin
    to ``"train"``, ``"search"`` and ``"report"``.

    Raises:
        ValueError: for an unknown pool, kind or gender.
    """
    if split not in DEFINITIONAL_SPLITS:
        raise ValueError(f"split must be one of {DEFINITIONAL_SPLITS}; got {split!r}.")
    if kind not in ATTRIBUTE_WORDS or gender not in ("female", "male"):
        raise ValueError(f"kind must be one of {sorted(ATTRIBUTE_WORDS)} and gender 'female' or 'male'; got "
                         f"{kind!r}, {gender!r}.")
    words = list(ATTRIBUTE_WORDS[kind][gender])
    random.Random(f"attributes-{kind}-{gender}-{split_seed}").shuffle(words)
    return words[DEFINITIONAL_SPLITS.index(split) :: len(DEFINITIONAL_SPLITS)]


def _pair_rows(feature: Feature, split: str, row_split: str, rng: random.Random, pairs_per_frame: int,
               nouns: Sequence[Any], split_seed: int) -> list[list[dict[str, Any]]]:
    """Gender-swapped row pairs of one pool: every noun pair in every frame with ``pairs_per_frame`` attribute
    pairs (drawn without repeats where the words allow)."""
    classes = pronoun_classes(feature)
    groups = []
    for kind, frames in ATTRIBUTE_FRAMES[split].items():
        female = attribute_words(split, kind, "female", split_seed)
        male = attribute_words(split, kind, "male", split_seed)
        for noun in nouns:
            for frame_index, frame in enumerate(frames):
                for _ in range(pairs_per_frame):
                    words = {"female": rng.choice(female), "male": rng.choice(male)}
                    pair = []
                    for gender, other in (("female", "male"), ("male", "female")):
                        cue = getattr(noun, gender)
                        pair.append({
                            "text": fill(frame, noun.subject(gender)), "factual": words[gender],
                            "alternative": words[other], "factual_class": classes[gender],
                            "alternative_class": classes[other], "label": feature.label_of(classes[gender]),
                            "split": row_split, "template": f"{split}-{kind}-{frame_index + 1:02d}", "cue": cue,
                            "kind": kind, "pair": f"{noun.male}|{frame_index}|{words['female']}|{words['male']}",
                        })
                    groups.append(pair)
    return groups


def attribute_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    *,
    pairs_per_frame: int = 2,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.DatasetDict:
    """Training rows of the ``"train"`` pool (words, frames and definitional nouns no evaluation row uses), in
    gender-swapped pairs; validation and test hold out nouns.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she`` (they name the classes; the slot holds an
            attribute).
        pairs_per_frame (`int`, *optional*, defaults to ``2``): attribute pairs drawn per noun pair and frame.
        split_ratios (`Sequence[float]`, *optional*, defaults to ``(0.8, 0.1, 0.1)``): fractions of noun pairs in
            train, validation and test.
        seed (`int`, *optional*, defaults to ``0``): draws the attribute pairs, the noun split and the order.
        split_seed (`int`, *optional*, defaults to ``0``): the deal of words and nouns into pools.

    Returns:
        A :class:`datasets.DatasetDict` with ``"train"``, ``"validation"`` and ``"test"`` in the columns of
        :data:`~gradiend_peft.data.PAIR_COLUMNS`, as many rows per class.
    """
    from .training_rows import _cut

    feature = as_feature(feature)
    ratios = check_split_ratios(split_ratios)
    rng = random.Random(seed)
    nouns = definitional_nouns("train", split_seed)
    rng.shuffle(nouns)
    by_split = {}
    for split, group in _cut(nouns, ratios).items():
        rows = [row for pair in _pair_rows(feature, "train", split, rng, pairs_per_frame, group, split_seed)
                for row in pair]
        rng.shuffle(rows)
        by_split[split] = rows
    import datasets

    return datasets.DatasetDict({s: to_dataset(by_split[s], PAIR_COLUMNS) for s in SPLITS})


def attribute_evaluation_rows(
    feature: Feature | Mapping[str, Sequence[str]],
    split: str = "search",
    *,
    pairs_per_frame: int = 1,
    max_pairs: int | None = 200,
    seed: int = 0,
    split_seed: int = 0,
) -> datasets.Dataset:
    """Attribute rows of the ``"search"`` or ``"report"`` pool, in gender-swapped pairs (consecutive rows share a
    ``pair`` id), for measuring how strongly a model ties attributes to gender.

    Args:
        feature: a feature whose paired classes hold ``he`` and ``she``.
        split (`str`, *optional*, defaults to ``"search"``): ``"search"`` or ``"report"``.
        pairs_per_frame (`int`, *optional*, defaults to ``1``): attribute pairs per noun pair and frame.
        max_pairs (`int`, *optional*, defaults to ``200``): keep at most this many row pairs (drawn with ``seed``).
        seed (`int`, *optional*, defaults to ``0``): draws the attribute pairs and the subset.
        split_seed (`int`, *optional*, defaults to ``0``): the deal of words, frames and nouns into pools.

    Returns:
        A :class:`datasets.Dataset` with :data:`~gradiend_peft.data.PAIR_COLUMNS` plus ``template``, ``cue`` (the
        noun), ``kind`` and ``pair``.
    """
    if split not in ("search", "report"):
        raise ValueError(f"split must be 'search' or 'report'; got {split!r}.")
    feature = as_feature(feature)
    rng = random.Random(seed)
    groups = _pair_rows(feature, split, split, rng, pairs_per_frame, definitional_nouns(split, split_seed), split_seed)
    rng.shuffle(groups)
    if max_pairs is not None:
        groups = groups[:max_pairs]
    return to_dataset([row for pair in groups for row in pair], ROW_COLUMNS)
