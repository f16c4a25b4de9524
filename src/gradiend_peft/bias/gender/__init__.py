"""The he/she data of the study: templates whose context leaves the pronoun open (neutral contexts, stereotypical vs
anti-stereotypical occupations), controls whose context decides it, training rows (occupations, first names,
definitional nouns, attributes), the occupation table, the definitional nouns, first names by gender and the other
forms of the pronouns.

```python
from gradiend_peft.data import Feature
from gradiend_peft.bias.gender import context_controls, neutral_context_rows, occupation_rows

feature = Feature({"M": ["he"], "F": ["she"]}, name="gender")
search_rows = neutral_context_rows(feature, "search")    # the rewrite search's rows
report_rows = neutral_context_rows(feature, "report")    # other templates, other occupations
controls = context_controls(feature, "search")           # "My mother said that [MASK] ..."
train = occupation_rows(feature)                         # DatasetDict train/validation/test, like mine_pairs
```
"""

from .attributes import ATTRIBUTE_FRAMES, ATTRIBUTE_WORDS, attribute_evaluation_rows, attribute_rows, attribute_words
from .definitional import DEFINITIONAL_NOUNS, DefinitionalNoun, definitional_nouns
from .names import load_names
from .occupations import EVALUATION_SPLITS, Occupation, load_occupations, occupation_split
from .pronouns import PRONOUN_FORMS, related_forms
from .templates import (
    REPORT_TEMPLATES,
    SEARCH_TEMPLATES,
    TRAIN_TEMPLATES,
    clear_names,
    context_controls,
    neutral_context_rows,
    pronoun_classes,
)
from .training_rows import definitional_rows, name_rows, occupation_rows

__all__ = [
    "ATTRIBUTE_FRAMES",
    "ATTRIBUTE_WORDS",
    "DEFINITIONAL_NOUNS",
    "EVALUATION_SPLITS",
    "PRONOUN_FORMS",
    "REPORT_TEMPLATES",
    "SEARCH_TEMPLATES",
    "TRAIN_TEMPLATES",
    "DefinitionalNoun",
    "Occupation",
    "attribute_evaluation_rows",
    "attribute_rows",
    "attribute_words",
    "clear_names",
    "context_controls",
    "definitional_nouns",
    "definitional_rows",
    "load_names",
    "load_occupations",
    "name_rows",
    "neutral_context_rows",
    "occupation_rows",
    "occupation_split",
    "pronoun_classes",
    "related_forms",
]
