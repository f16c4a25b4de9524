"""The other English forms of the subject pronouns: a sentence with "his" is not neutral for he/she.

`gradiend_peft.data.mine_neutral` excludes what it is given; the study gives it the forms of the feature's pronouns::

    from gradiend_peft.data import Feature, load_corpus, mine_neutral
    from gradiend_peft.bias.gender import related_forms

    gender = Feature({"M": ["he"], "F": ["she"]})
    neutral = mine_neutral(load_corpus("english"), gender, exclude_words=related_forms(gender))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...data.feature import Feature
from ...data.mining import as_feature

__all__ = ["PRONOUN_FORMS", "related_forms"]

PRONOUN_FORMS: dict[str, tuple[str, ...]] = {
    "he": ("him", "his", "himself"),
    "she": ("her", "hers", "herself"),
    "it": ("its", "itself"),
    "they": ("them", "their", "theirs", "themselves"),
    "i": ("me", "my", "mine", "myself"),
    "we": ("us", "our", "ours", "ourselves"),
    "you": ("your", "yours", "yourself", "yourselves"),
}
"""The other English forms of each subject pronoun: a sentence with "his" is not neutral for he/she."""


def related_forms(feature: Feature | Mapping[str, Sequence[str]]) -> list[str]:
    """The English pronoun forms (`PRONOUN_FORMS`) of the feature's pronoun words, e.g. ``him, his, himself, her,
    hers, herself`` for he/she; empty for a feature without English subject pronouns (German articles...).

    Args:
        feature: a `Feature` or a ``{class: words}`` mapping.

    Returns:
        The forms, each once, in the order of the feature's words.
    """
    forms: list[str] = []
    for word in as_feature(feature).words:
        for form in PRONOUN_FORMS.get(word.lower(), ()):
            if form not in forms:
                forms.append(form)
    return forms
