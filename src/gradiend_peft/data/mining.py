"""Mining GRADIEND training rows from text.

Each occurrence of a target word of the feature's pair becomes one row: the sentence with that
occurrence replaced by :data:`~gradiend_peft.data.feature.MASK_PLACEHOLDER`, the word as it occurred
(*factual*), and a word of the other class (*alternative*). Other occurrences in the same sentence
stay as text, so a sentence with two targets gives two rows.

Columns of every split (:data:`PAIR_COLUMNS`):

========================  ====================================================================
``text``                  the sentence with exactly one ``"[MASK]"`` slot (at most ``context_chars``
                          characters on each side of it, see :func:`mine_pairs`)
``factual``               the target as it occurred, e.g. ``"Die"``
``alternative``           a word of the other class, casing copied from ``factual``, e.g. ``"Der"``
``factual_class``         the class of ``factual``
``alternative_class``     the class of ``alternative``
``label``                 ``+1.0`` when ``factual_class`` is ``feature.pair[0]``, ``-1.0`` for ``pair[1]``
``split``                 ``"train"``, ``"validation"`` or ``"test"``
========================  ====================================================================

The alternative is drawn at random among the other class's words, weighted by how often each word
occurs as a factual target in the mined text (a word that never occurs is never drawn), with a
:class:`random.Random` seeded by ``seed``: the same input and arguments give the same rows.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .feature import MASK_PLACEHOLDER, Feature, copy_casing, normalize_word
from .text import TextSource, counted, iter_sentences

if TYPE_CHECKING:
    import datasets

__all__ = ["SPLITS", "PAIR_COLUMNS", "MiningReport", "as_feature", "check_split_ratios", "count_words", "mine_pairs"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_WORD = re.compile(r"\w+(?:['’-]\w+)*")

DEFAULT_CONTEXT_CHARS = 2000
"""The characters of context a mined row keeps on each side of its slot by default (see `mine_pairs`)."""

PAIR_COLUMNS = ("text", "factual", "alternative", "factual_class", "alternative_class", "label", "split")
"""The column names of a mined split, in order."""


def _pair_schema():
    import datasets

    return datasets.Features(
        {name: datasets.Value("float32" if name == "label" else "string") for name in PAIR_COLUMNS}
    )


def count_words(text: str) -> int:
    """The number of words in ``text``; a word is a run of letters/digits, with inner ``'`` or ``-`` ("don't")."""
    return len(_WORD.findall(text))


def as_feature(feature: Feature | Mapping[str, Sequence[str]]) -> Feature:
    """Accept a :class:`Feature` or a plain ``{class: words}`` mapping."""
    if isinstance(feature, Feature):
        return feature
    if isinstance(feature, Mapping):
        return Feature(classes=feature)
    raise TypeError(
        f"feature must be a Feature or a mapping of classes to words such as {{'SG': ['is'], 'PL': ['are']}}; "
        f"got {type(feature).__name__}."
    )


@dataclass(frozen=True)
class MiningReport:
    """What mining found.

    Attributes:
        sentences: sentences read (after splitting, before de-duplication).
        duplicates: sentences skipped because the same sentence came earlier.
        skipped_with_placeholder: sentences skipped because they already contained ``"[MASK]"``.
        skipped_too_long: sentences skipped for having more than ``max_words`` words.
        skipped_short_context: occurrences skipped for having fewer than ``min_context_words`` words before them.
        occurrences: per class, the occurrences that qualified as rows (before balancing).
        word_counts: per class, the qualified occurrences of each target word (lower-cased); these are
            the weights of the alternative draw.
        rows: per split, per class, the rows in the result.
    """

    sentences: int
    duplicates: int
    skipped_with_placeholder: int
    skipped_too_long: int
    skipped_short_context: int
    occurrences: dict[str, int]
    word_counts: dict[str, dict[str, int]]
    rows: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Candidate:
    """One occurrence: its sentence (shared by every occurrence in it, not copied) and where the target stands."""

    sentence: str
    start: int
    end: int
    cls: str
    split: str = ""

    @property
    def factual(self) -> str:
        return self.sentence[self.start : self.end]

    def text(self, context_chars: int | None) -> str:
        """The row's text: the sentence with the target replaced by the slot, cut to ``context_chars`` characters
        on each side of it (see `mine_pairs`)."""
        sentence, start, end = self.sentence, self.start, self.end
        if context_chars is None:
            return sentence[:start] + MASK_PLACEHOLDER + sentence[end:]
        left = max(0, start - context_chars)
        if left > 0 and not sentence[left - 1].isspace():  # drop the cut word; keep the cut when no space is near
            space = sentence.find(" ", left, start)
            left = space + 1 if space >= 0 else left
        right = min(len(sentence), end + context_chars)
        if right < len(sentence) and not sentence[right].isspace():
            space = sentence.rfind(" ", end, right)
            right = space if space >= 0 else right
        return sentence[left:start] + MASK_PLACEHOLDER + sentence[end:right]


def _held_out_map(held_out_words: Sequence[str] | Mapping[str, Sequence[str]] | None, feature: Feature) -> dict[str, str]:
    """``{lower-cased word: split}`` for the held-out words, validated against the pair's words."""
    if held_out_words is None:
        return {}
    if isinstance(held_out_words, str):
        raise TypeError(f"held_out_words must be a list of words or a {{split: words}} mapping, not the string {held_out_words!r}.")
    by_split = held_out_words if isinstance(held_out_words, Mapping) else {"test": held_out_words}
    pair_words = {normalize_word(w) for c in feature.pair for w in feature.classes[c]}
    result: dict[str, str] = {}
    for split, words in by_split.items():
        if split not in SPLITS:
            raise ValueError(f"held_out_words names split {split!r}; the splits are {SPLITS}.")
        for word in words:
            key = normalize_word(word)
            if key not in pair_words:
                raise ValueError(f"held-out word {word!r} is not a target word of the classes {feature.pair}.")
            result[key] = split
    return result


def check_split_ratios(split_ratios: Sequence[float]) -> tuple[float, float, float]:
    """``(train, validation, test)`` fractions as floats, or a ValueError naming what is wrong."""
    ratios = tuple(float(r) for r in split_ratios)
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(
            f"split_ratios must be three non-negative numbers (train, validation, test) that sum to 1; got {split_ratios!r}."
        )
    return ratios


def _collect(
    sentences: Iterable[str], feature: Feature, min_context_words: int, max_words: int | None, stats: Counter
) -> dict[str, list[_Candidate]]:
    """One candidate row per occurrence of a pair-class word, by class; skips are counted in ``stats``."""
    pattern = feature.pattern(feature.pair)
    by_class: dict[str, list[_Candidate]] = {c: [] for c in feature.pair}
    for sentence in sentences:
        if MASK_PLACEHOLDER in sentence:
            stats["skipped_with_placeholder"] += 1
            continue
        if max_words is not None and count_words(sentence) > max_words:
            stats["skipped_too_long"] += 1
            continue
        for match in pattern.finditer(sentence):
            # the words before the slot, counted up to min_context_words only (no copy of the prefix: a long line
            # has many occurrences, and copying or scanning its whole prefix for each would be quadratic)
            if min_context_words and _words_before(sentence, match.start(), min_context_words) < min_context_words:
                stats["skipped_short_context"] += 1
                continue
            cls = feature.class_of(match.group(0))
            by_class[cls].append(_Candidate(sentence, match.start(), match.end(), cls))
    return by_class


def _words_before(sentence: str, position: int, most: int) -> int:
    """``min(count_words(sentence[:position]), most)``, reading no further than the ``most``-th word."""
    return sum(1 for _ in itertools.islice(_WORD.finditer(sentence, 0, position), most))


def _assign_splits(
    rows: list[_Candidate], held_out: dict[str, str], ratios: tuple[float, float, float]
) -> None:
    free = []
    for row in rows:
        split = held_out.get(normalize_word(row.factual))
        if split:
            row.split = split
        else:
            free.append(row)
    n = len(free)
    cut1 = round(n * ratios[0])
    cut2 = max(cut1, round(n * (ratios[0] + ratios[1])))
    for i, row in enumerate(free):
        row.split = SPLITS[0] if i < cut1 else SPLITS[1] if i < cut2 else SPLITS[2]


def _alternative_chooser(feature: Feature, word_counts: dict[str, Counter], held_out: dict[str, str], rng: random.Random):
    """A function ``(cls, split) -> word`` drawing the alternative for a row of ``cls`` in ``split``.

    A row in split S never gets an alternative that is held out to another split.
    """
    cache: dict[tuple[str, str], tuple[list[str], list[int]]] = {}

    def choose(cls: str, split: str) -> str:
        key = (cls, split)
        if key not in cache:
            other = feature.other_class(cls)
            words = [w for w in feature.classes[other] if held_out.get(normalize_word(w), split) == split]
            weights = [word_counts[other][normalize_word(w)] for w in words]
            if not sum(weights):
                raise ValueError(
                    f"no alternative for class {cls!r} rows in the {split!r} split: the words of class {other!r} "
                    f"{list(feature.classes[other])} that may appear there ({words}) never occur in the text. "
                    "Hold out fewer words or give more text."
                )
            cache[key] = (words, weights)
        words, weights = cache[key]
        return rng.choices(words, weights=weights, k=1)[0]

    return choose


def mine_pairs(
    texts: TextSource,
    feature: Feature | Mapping[str, Sequence[str]],
    *,
    tokenizer: Any = None,
    seed: int = 0,
    min_context_words: int = 0,
    max_words: int | None = None,
    context_chars: int | None = DEFAULT_CONTEXT_CHARS,
    balance: bool = True,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    held_out_words: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    max_rows_per_class: int | None = None,
    split_sentences: bool = True,
    deduplicate: bool = True,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    return_report: bool = False,
    progress: bool | None = None,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, MiningReport]:
    """Mine GRADIEND rows (masked text, factual, alternative, classes, label, split) from text.

    Args:
        texts: a list of strings, a text file path (one text per line, ``.gz`` allowed), a
            :class:`datasets.Dataset` (with ``text_column``), or a Hub dataset id (needs network).
        feature: a :class:`~gradiend_peft.data.Feature`, or a ``{class: [words]}`` mapping. Rows are
            made for the classes of ``feature.pair``.
        tokenizer: optional. When given, target words that it splits into several tokens are reported
            in the log (a causal-LM collator will refuse such rows; a masked-LM collator uses one mask
            per piece). Nothing is filtered here.
        seed: seeds balancing, splitting, the alternative draw and the row order.
        min_context_words: occurrences with fewer words before them in their sentence are skipped
            (useful for causal LMs, which only see the text before the slot).
        max_words: sentences with more words are skipped (``None``: no limit).
        context_chars (`int`, *optional*, defaults to 2000): each row keeps at most this many characters of its
            sentence before the slot and as many after it, cut back to a space so that no word is split. The
            default, about 400 English words or 500 tokens on each side, holds all that a 512-position masked LM
            sees around the slot and the 500 tokens before it that a causal LM reads, and is longer than every
            sentence of the embedded corpora (so their rows are whole sentences). It keeps memory linear in the
            input where sentence splitting does not bound a row (a long line without sentence ends, or
            ``split_sentences=False``): whole-sentence rows would hold the sentence once per occurrence.
            ``None``: whole sentences.
        balance: give every class as many rows as the rarest class has (random subsample).
        split_ratios: train, validation and test fractions, applied per class.
        held_out_words: words whose rows all go to one split and never appear as alternatives
            elsewhere: a list (held out to ``"test"``) or a ``{split: [words]}`` mapping.
        max_rows_per_class: keep at most this many rows per class (after balancing).
        split_sentences: split each text into sentences first (``False``: each text is one unit).
        deduplicate: skip a sentence identical to an earlier one.
        text_column (`str`, *optional*, defaults to ``"text"``): the column that holds the text, for a
            :class:`datasets.Dataset` or Hub dataset source.
        dataset_config (`str`, *optional*, defaults to ``None``): the configuration of a Hub dataset source.
        dataset_split (`str`, *optional*, defaults to ``"train"``): the split of a Hub dataset source.
        return_report: also return the :class:`MiningReport`.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        A :class:`datasets.DatasetDict` with splits ``"train"``, ``"validation"``, ``"test"`` (columns in
        the module docstring), or ``(dataset_dict, report)`` with ``return_report=True``.

    Raises:
        ValueError: when no text is given, or a class of the pair gets no rows (the message names the
            class and its words).

    Examples:
        >>> rows = mine_pairs(["Die Katze sieht, dass der Hund kommt."], {"M": ["der"], "F": ["die"]},
        ...                   balance=False, split_ratios=(1, 0, 0))
        >>> sorted(rows["train"]["text"])
        ['Die Katze sieht, dass [MASK] Hund kommt.', '[MASK] Katze sieht, dass der Hund kommt.']
    """
    import datasets

    feature = as_feature(feature)
    ratios = check_split_ratios(split_ratios)
    if min_context_words < 0 or (max_words is not None and max_words < 1):
        raise ValueError("min_context_words must be >= 0 and max_words >= 1 (or None).")
    if context_chars is not None and (isinstance(context_chars, bool) or not isinstance(context_chars, int)
                                      or context_chars < 1):
        raise ValueError(f"context_chars must be a positive integer or None (whole sentences); got {context_chars!r}.")
    if max_rows_per_class is not None and max_rows_per_class < 1:
        raise ValueError(f"max_rows_per_class must be a positive number or None; got {max_rows_per_class}.")
    held_out = _held_out_map(held_out_words, feature)
    rng = random.Random(seed)

    sentences = iter_sentences(
        texts, split=split_sentences, text_column=text_column, dataset_config=dataset_config, dataset_split=dataset_split
    )
    sentences = tqdm(sentences, desc="mining", unit=" sentences", disable=None if progress is None else not progress)
    stats: Counter = Counter()
    by_class = _collect(counted(sentences, stats, deduplicate=deduplicate), feature, min_context_words, max_words, stats)
    if not stats["sentences"]:
        raise ValueError("no text to mine: the source holds no non-empty text. Give a non-empty list of sentences.")

    word_counts = {c: Counter(normalize_word(r.factual) for r in rows) for c, rows in by_class.items()}
    for cls, rows in by_class.items():
        if not rows:
            raise ValueError(
                f"class {cls!r} (words {list(feature.classes[cls])}) has no rows in {stats['sentences']} sentences"
                + (f" with min_context_words={min_context_words}" if min_context_words else "")
                + ". Give more text that contains these words, or lower min_context_words."
            )
    logger.info(
        "mined %s from %d sentences: %s",
        feature.name or "feature",
        stats["sentences"],
        ", ".join(f"{c}={len(r)} ({dict(word_counts[c])})" for c, r in by_class.items()),
    )
    if tokenizer is not None:
        from .collators import check_single_token

        split_words = check_single_token(tokenizer, feature)
        if split_words:
            logger.warning(
                "the tokenizer splits these targets into several tokens (a causal-LM collator refuses their rows; "
                "a masked-LM collator uses one mask per piece): %s",
                split_words,
            )

    n_keep = min(len(r) for r in by_class.values()) if balance else None
    kept: list[_Candidate] = []
    for cls, rows in by_class.items():
        rng.shuffle(rows)
        n = len(rows) if n_keep is None else n_keep
        if max_rows_per_class is not None:
            n = min(n, max_rows_per_class)
        _assign_splits(rows[:n], held_out, ratios)
        kept.extend(rows[:n])

    choose = _alternative_chooser(feature, word_counts, held_out, rng)
    columns: dict[str, dict[str, list]] = {s: {name: [] for name in PAIR_COLUMNS} for s in SPLITS}
    for split in SPLITS:
        rows = [r for r in kept if r.split == split]
        rng.shuffle(rows)
        out = columns[split]
        for row in rows:
            other = feature.other_class(row.cls)
            out["text"].append(row.text(context_chars))
            out["factual"].append(row.factual)
            out["alternative"].append(copy_casing(row.factual, choose(row.cls, split)))
            out["factual_class"].append(row.cls)
            out["alternative_class"].append(other)
            out["label"].append(feature.label_of(row.cls))
            out["split"].append(split)

    schema = _pair_schema()
    result = datasets.DatasetDict({s: datasets.Dataset.from_dict(columns[s], features=schema) for s in SPLITS})
    row_counts = {s: dict(Counter(columns[s]["factual_class"])) for s in SPLITS}
    logger.info("rows per split and class: %s", row_counts)
    for split, ratio in zip(SPLITS, ratios):
        if ratio > 0 and not columns[split]["text"]:
            logger.warning("the %s split is empty: too few rows for split_ratios=%s", split, tuple(split_ratios))
    if not return_report:
        return result
    report = MiningReport(
        sentences=stats["sentences"],
        duplicates=stats["duplicates"],
        skipped_with_placeholder=stats["skipped_with_placeholder"],
        skipped_too_long=stats["skipped_too_long"],
        skipped_short_context=stats["skipped_short_context"],
        occurrences={c: len(r) for c, r in by_class.items()},
        word_counts={c: dict(wc) for c, wc in word_counts.items()},
        rows=row_counts,
    )
    return result, report
