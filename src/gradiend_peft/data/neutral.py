"""Neutral text: sentences that contain none of a feature's words.

Neutral sentences measure the language-modelling score (LMS) of a rewritten model and give the
encoder's neutral check (a neutral input should encode near 0).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .feature import MASK_PLACEHOLDER, Feature, word_pattern
from .mining import as_feature, count_words
from .text import TextSource, counted, iter_sentences

if TYPE_CHECKING:
    import datasets

__all__ = ["mine_neutral"]

logger = logging.getLogger(__name__)


def mine_neutral(
    texts: TextSource,
    feature: Feature | Mapping[str, Sequence[str]] | None,
    *,
    exclude_words: Iterable[str] = (),
    min_words: int = 1,
    max_words: int | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    split_sentences: bool = True,
    deduplicate: bool = True,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    progress: bool | None = None,
) -> datasets.Dataset:
    """Collect sentences that contain no word of ``feature`` (every class, not only the pair) and no word of
    ``exclude_words`` (for instance the other forms of the feature's words), all matched whole-word and
    case-insensitively.

    Args:
        texts: a list of strings, a text file path, a :class:`datasets.Dataset` (with ``text_column``)
            or a Hub dataset id, as for :func:`~gradiend_peft.data.mine_pairs`.
        feature: the feature whose words must be absent, a ``{class: words}`` mapping, or ``None``
            (then only ``exclude_words`` are excluded).
        exclude_words: more words to exclude, e.g. the other forms of the feature's words (``["den", "dem", "des"]``
            beside the articles ``der``/``die``/``das``).
        min_words (`int`, *optional*, defaults to ``1``): skip sentences with fewer words.
        max_words (`int`, *optional*, defaults to ``None``): skip sentences with more words (``None``: no upper
            limit).
        max_rows: keep at most this many sentences, drawn at random with ``seed`` (order of the text kept).
        seed: seeds the draw for ``max_rows``.
        split_sentences (`bool`, *optional*, defaults to ``True``): split each text into sentences first
            (``False``: each text is one unit).
        deduplicate (`bool`, *optional*, defaults to ``True``): skip a sentence identical to an earlier one.
        text_column (`str`, *optional*, defaults to ``"text"``): the column that holds the text, for a
            :class:`datasets.Dataset` or Hub dataset source.
        dataset_config (`str`, *optional*, defaults to ``None``): the configuration of a Hub dataset source.
        dataset_split (`str`, *optional*, defaults to ``"train"``): the split of a Hub dataset source.
        progress (`bool`, *optional*, defaults to ``None``): show a progress bar (``None``: only on a terminal).

    Returns:
        A :class:`datasets.Dataset` with the single column ``text``.

    Raises:
        ValueError: when there is nothing to exclude, or no sentence qualifies.

    Examples:
        >>> list(mine_neutral(["Der Hund lief. Ein Hund lief. Die Katze sah den Hund."], {"M": ["der"], "F": ["die"]},
        ...                   exclude_words=["den"])["text"])
        ['Ein Hund lief.']
    """
    import datasets

    words = list(as_feature(feature).words) if feature is not None else []
    if isinstance(exclude_words, str):
        raise TypeError(f"exclude_words must be a list of words, not the string {exclude_words!r}.")
    words += list(exclude_words)
    if not words:
        raise ValueError("mine_neutral needs a feature or exclude_words: with no words to exclude every sentence is neutral.")
    if min_words < 0 or (max_words is not None and max_words < min_words):
        raise ValueError(f"need 0 <= min_words <= max_words; got min_words={min_words}, max_words={max_words}.")
    pattern = word_pattern(words)

    sentences = iter_sentences(
        texts, split=split_sentences, text_column=text_column, dataset_config=dataset_config, dataset_split=dataset_split
    )
    sentences = tqdm(sentences, desc="neutral", unit=" sentences", disable=None if progress is None else not progress)
    stats: Counter = Counter()
    kept: list[str] = []
    for sentence in counted(sentences, stats, deduplicate=deduplicate):
        n_words = count_words(sentence)
        if n_words < min_words or (max_words is not None and n_words > max_words):
            continue
        if MASK_PLACEHOLDER in sentence or pattern.search(sentence):
            continue
        kept.append(sentence)
    if not kept:
        raise ValueError(
            f"none of {stats['sentences']} sentences is neutral (free of {sorted(set(words))[:20]} with {min_words}"
            f"-{max_words or 'any'} words). Give more text or loosen min_words/max_words."
        )
    if max_rows is not None and len(kept) > max_rows:
        chosen = sorted(random.Random(seed).sample(range(len(kept)), max_rows))
        kept = [kept[i] for i in chosen]
    logger.info("kept %d neutral sentences of %d", len(kept), stats["sentences"])
    return datasets.Dataset.from_dict({"text": kept}, features=datasets.Features({"text": datasets.Value("string")}))
