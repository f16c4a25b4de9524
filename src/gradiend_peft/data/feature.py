"""A feature: named classes of target words, matched as whole words in text.

A GRADIEND feature is a set of classes, each with target words, for example the German definite articles of
masculine and feminine nouns::

    >>> feature = Feature(classes={"M": ["der"], "F": ["die"]})
    >>> feature.label_of("M"), feature.label_of("F")
    (1.0, -1.0)

Matching is whole-word and case-insensitive: ``it`` matches "It", "it's" (as "It" before "'s") and
"IT", never the "it" inside "item", "bit" or "its". A word joined to a letter, digit, underscore or
hyphen is not a match ("it-based", "it2"), so compounds do not turn into rows.

Labels: the first class of the *pair* gets ``+1.0``, the second ``-1.0``. A binary feature's pair is
its two classes in the order given. A feature with more than two classes must name its ``pair``:
mining then makes rows only for the two classes of the pair (their alternatives come from the other
class of the pair), while the words of every class still count as feature words, for example when
neutral sentences are collected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["MASK_PLACEHOLDER", "Feature", "copy_casing"]

MASK_PLACEHOLDER = "[MASK]"
"""The literal slot marker in mined texts. Collators replace it with the tokenizer's own mask token(s)."""

# A match may not touch a letter, digit, underscore or hyphen on either side.
_LEFT_EDGE = r"(?<![\w-])"
_RIGHT_EDGE = r"(?![\w-])"


def normalize_word(word: str) -> str:
    """The matching key of a word: inner whitespace collapsed, lower-cased."""
    # lower(), not casefold(): it must agree with re.IGNORECASE ("ß" stays "ß").
    return " ".join(word.split()).lower()


def copy_casing(template: str, word: str) -> str:
    """Write ``word`` with the casing pattern of ``template``.

    Args:
        template: the surface form to imitate, e.g. ``"Die"``.
        word: the word to re-case, as listed in the feature, e.g. ``"der"``.

    Returns:
        ``word`` in upper case when ``template`` is all capitals (and longer than one letter), with a
        capital first letter when ``template`` starts with one, otherwise ``word`` unchanged.

    Examples:
        >>> copy_casing("Die", "der"), copy_casing("DIE", "der"), copy_casing("die", "der")
        ('Der', 'DER', 'der')
    """
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass(frozen=True)
class Feature:
    """Named classes of target words.

    Args:
        classes: mapping from class name to its target words (one or more per class). Words are
            matched whole and case-insensitively; a word may contain spaces ("New York": any run of
            whitespace matches the space). No word may belong to two classes.
        pair: the two classes that mining labels ``+1.0`` (``pair[0]``) and ``-1.0`` (``pair[1]``).
            Defaults to the two classes of a binary feature; required with more than two classes.
        name: an optional name for logs and reports, e.g. ``"number"``.

    Examples:
        >>> number = Feature(classes={"SG": ["is", "was"], "PL": ["are", "were"]}, name="number")
        >>> number.class_of("Was")
        'SG'
    """

    classes: Mapping[str, Sequence[str]]
    pair: tuple[str, str] | None = None
    name: str | None = None
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.classes, Mapping) or len(self.classes) < 2:
            raise ValueError(
                "Feature needs a mapping of at least two classes to their words, "
                f"e.g. {{'SG': ['is'], 'PL': ['are']}}; got {self.classes!r}."
            )
        classes: dict[str, tuple[str, ...]] = {}
        lookup: dict[str, str] = {}
        for name, words in self.classes.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"class names must be non-empty strings; got {name!r}.")
            if isinstance(words, str) or not isinstance(words, Iterable):
                raise TypeError(
                    f"class {name!r}: give its words as a list, e.g. [{words!r}], not {type(words).__name__}."
                )
            words = tuple(words)
            if not words:
                raise ValueError(f"class {name!r} has no target words; give at least one.")
            for word in words:
                if not isinstance(word, str) or not word.strip():
                    raise ValueError(f"class {name!r}: every target word must be a non-empty string; got {word!r}.")
                if word != word.strip() or "\n" in word:
                    raise ValueError(f"class {name!r}: target word {word!r} has surrounding whitespace; strip it.")
                key = normalize_word(word)
                if key in lookup and lookup[key] != name:
                    raise ValueError(
                        f"target word {word!r} is in both class {lookup[key]!r} and class {name!r}; "
                        "each word may belong to one class only."
                    )
                lookup[key] = name
            classes[name] = words
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "_lookup", lookup)

        pair = self.pair
        if pair is None:
            if len(classes) > 2:
                raise ValueError(
                    f"Feature has {len(classes)} classes {list(classes)}; name the two that get the labels "
                    f"+1 and -1 with pair=(..., ...), e.g. pair={tuple(list(classes)[:2])!r}."
                )
            pair = tuple(classes)
        pair = tuple(pair)
        if len(pair) != 2 or pair[0] == pair[1] or any(p not in classes for p in pair):
            raise ValueError(f"pair must name two different classes of {list(classes)}; got {self.pair!r}.")
        object.__setattr__(self, "pair", pair)

    def __hash__(self) -> int:
        return hash((tuple((k, tuple(v)) for k, v in self.classes.items()), self.pair, self.name))

    def to_dict(self) -> dict:
        """A JSON-ready description; ``Feature.from_dict(feature.to_dict()) == feature``."""
        return {"classes": {k: list(v) for k, v in self.classes.items()}, "pair": list(self.pair), "name": self.name}

    @classmethod
    def from_dict(cls, data: Mapping) -> Feature:
        """The inverse of :meth:`to_dict`."""
        pair = data.get("pair")
        return cls(classes=data["classes"], pair=tuple(pair) if pair is not None else None, name=data.get("name"))

    @property
    def words(self) -> tuple[str, ...]:
        """Every target word of every class, in class order."""
        return tuple(w for words in self.classes.values() for w in words)

    def class_of(self, word: str) -> str:
        """The class of a target word in any casing. Raises ``KeyError`` for a word of no class."""
        return self._lookup[normalize_word(word)]

    def label_of(self, class_name: str) -> float:
        """``+1.0`` for ``pair[0]``, ``-1.0`` for ``pair[1]``, ``0.0`` for any other class."""
        if class_name not in self.classes:
            raise KeyError(f"{class_name!r} is not a class of this feature ({list(self.classes)}).")
        if class_name == self.pair[0]:
            return 1.0
        if class_name == self.pair[1]:
            return -1.0
        return 0.0

    def other_class(self, class_name: str) -> str:
        """The other class of the pair: the class whose words serve as alternatives for ``class_name``."""
        if class_name not in self.pair:
            raise KeyError(f"{class_name!r} is not in the pair {self.pair}.")
        return self.pair[1] if class_name == self.pair[0] else self.pair[0]

    def pattern(self, classes: Iterable[str] | None = None) -> re.Pattern[str]:
        """A compiled regular expression matching the words of ``classes`` (default: all) as whole words."""
        names = list(self.classes) if classes is None else list(classes)
        words = {w for name in names for w in self.classes[name]}
        return word_pattern(words)


def word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """A case-insensitive whole-word pattern for ``words`` (longest first, spaces match any whitespace).

    Raises:
        ValueError: when ``words`` is empty.
    """
    unique = sorted({normalize_word(w) for w in words}, key=lambda w: (-len(w), w))
    if not unique:
        raise ValueError("word_pattern needs at least one word.")
    body = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in unique)
    return re.compile(f"{_LEFT_EDGE}(?:{body}){_RIGHT_EDGE}", re.IGNORECASE)
