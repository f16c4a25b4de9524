"""The pairs of classes of a feature: one GRADIEND adapter learns one pair.

A feature of three or more classes (say ``A``, ``B``, ``C``) is learned as one adapter per pair of classes: ``A-B``,
``A-C`` and ``B-C`` by default, or the pairs the user names. A pair is an ordered tuple ``(first, second)``: its
rows label ``first`` +1 and ``second`` -1 (`Feature.label_of` of `pair_feature`), and its adapter, once its sign is
normalised, encodes ``first`` to +1.

    >>> feature = Feature(classes={"A": ["der"], "B": ["die"], "C": ["das"]}, pair=("A", "B"))
    >>> pairs_of_classes(feature)
    (('A', 'B'), ('A', 'C'), ('B', 'C'))
    >>> parse_class_pairs("C-A,B-C", feature)
    (('C', 'A'), ('B', 'C'))
    >>> pair_adapter_names(pairs_of_classes(feature))[("A", "C")]
    'A-vs-C'
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

from .feature import Feature

__all__ = ["pairs_of_classes", "pair_adapter_names", "pair_feature", "pair_label", "parse_class_pairs"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def pairs_of_classes(feature: Feature, pairs: Iterable[Sequence[str]] | None = None) -> tuple[tuple[str, str], ...]:
    """The pairs of ``feature``'s classes that get an adapter each.

    Args:
        feature (`Feature`): The feature (two or more classes).
        pairs (`Iterable[Sequence[str]]`, *optional*): The pairs to learn, each ``(first, second)``; default every
            pair of classes in the feature's class order (``first`` the earlier class).

    Returns:
        `tuple[tuple[str, str], ...]`: The pairs, in the order given (or class order).

    Raises:
        `ValueError`: for a pair that names an unknown class, a class twice, or the same two classes as another
            pair (in either order).
    """
    if pairs is None:
        return tuple(itertools.combinations(feature.classes, 2))
    result: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for pair in pairs:
        if isinstance(pair, str) or len(tuple(pair)) != 2:
            raise ValueError(f"A pair of classes is two class names, e.g. ('A', 'B'); got {pair!r}.")
        first, second = (str(name) for name in pair)
        unknown = [name for name in (first, second) if name not in feature.classes]
        if unknown:
            raise ValueError(f"Pair {pair!r} names {unknown}, which are not classes of the feature "
                             f"({list(feature.classes)}).")
        if first == second:
            raise ValueError(f"Pair {pair!r} names class {first!r} twice; a pair is two different classes.")
        key = frozenset((first, second))
        if key in seen:
            raise ValueError(f"Pair {pair!r} is given twice (a pair and its reverse learn the same adapter); "
                             "name each pair once.")
        seen.add(key)
        result.append((first, second))
    if not result:
        raise ValueError("No pairs given; name at least one pair of classes, e.g. [('A', 'B')].")
    return tuple(result)


def parse_class_pairs(spec: str, feature: Feature) -> tuple[tuple[str, str], ...]:
    """Parses ``"A-B,A-C"`` into pairs of ``feature``'s classes (`pairs_of_classes` checks them).

    A class name may itself contain ``-``: each item is split at the one ``-`` that leaves a class name on both
    sides.

    Raises:
        `ValueError`: for an item with no such split, or with more than one (the names are then ambiguous).
    """
    pairs = []
    for item in [part.strip() for part in spec.split(",") if part.strip()]:
        splits = [(item[:i].strip(), item[i + 1:].strip()) for i, char in enumerate(item) if char == "-"]
        known = [pair for pair in splits if pair[0] in feature.classes and pair[1] in feature.classes]
        if len(known) != 1:
            problem = "no split into two" if not known else f"{len(known)} splits into"
            raise ValueError(f"Cannot read pair {item!r} of {spec!r}: there is {problem} class names of "
                             f"{list(feature.classes)}. Write FIRST-SECOND, e.g. "
                             f"{'-'.join(list(feature.classes)[:2])!r}.")
        pairs.append(known[0])
    return pairs_of_classes(feature, pairs)


def pair_feature(feature: Feature, pair: Sequence[str]) -> Feature:
    """``feature`` with ``pair`` as the two classes that rows are mined for and labelled (+1 for ``pair[0]``); the
    words of every class still count as feature words (e.g. for neutral text)."""
    return Feature(classes=feature.classes, pair=tuple(pair), name=feature.name)


def pair_label(pair: Sequence[str]) -> str:
    """``"first-second"``: how pairs are written in tables, plots and ``--pairs``."""
    return f"{pair[0]}-{pair[1]}"


def pair_adapter_names(pairs: Sequence[Sequence[str]]) -> dict[tuple[str, str], str]:
    """One adapter name per pair, ``"<first>-vs-<second>"``: letters, digits, ``_`` and ``-`` only (no ``.``, which
    peft refuses, and no path separator: the name is also the adapter's folder). Other characters become ``_``; a
    name that two pairs would share (ignoring case, for case-insensitive file systems) gets ``-2``, ``-3``...
    appended.

    Returns:
        `dict[tuple[str, str], str]`: pair -> adapter name, in the order of ``pairs``.
    """
    names: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for pair in pairs:
        first, second = (_UNSAFE.sub("_", str(name)).strip("_") or "class" for name in pair)
        base = name = f"{first}-vs-{second}"
        count = 1
        while name.lower() in used:
            count += 1
            name = f"{base}-{count}"
        used.add(name.lower())
        names[(str(pair[0]), str(pair[1]))] = name
    return names
