"""Race and religion as GRADIEND features of three classes: term lists, template rows and controls.

Typical use::

    from gradiend_peft.bias.groups import context_controls, group_feature, neutral_context_rows, training_rows
    from gradiend_peft.data import pairs_of_classes

    feature = group_feature("religion")                     # Christian / Jewish / Muslim
    rows = {pair: training_rows("religion", pair) for pair in pairs_of_classes(feature)}
    search = neutral_context_rows("religion", ("Christian", "Muslim"), "search")
    controls = context_controls("religion", ("Christian", "Muslim"), "search")

See `terms` for the word lists and their provenance, `rows` for the frames and why they are templates.
"""

from .rows import (
    REPORT_TEMPLATES,
    SEARCH_TEMPLATES,
    TRAIN_TEMPLATES,
    context_controls,
    group_feature,
    neutral_context_rows,
    search_classes,
    training_rows,
)
from .terms import FEATURES, PERSON_NOUNS, SOURCES, GroupTerms, group_terms

__all__ = [
    "FEATURES",
    "PERSON_NOUNS",
    "REPORT_TEMPLATES",
    "SEARCH_TEMPLATES",
    "SOURCES",
    "TRAIN_TEMPLATES",
    "GroupTerms",
    "context_controls",
    "group_feature",
    "group_terms",
    "neutral_context_rows",
    "search_classes",
    "training_rows",
]
