"""Data for GRADIEND: features, mined training rows, neutral text, collators and embedded corpora.

Typical use::

    from gradiend_peft.data import Feature, load_corpus, mine_pairs, mine_neutral, collator_for

    feature = Feature(classes={"M": ["he"], "F": ["she"]}, name="gender")
    texts = load_corpus("english")
    pairs = mine_pairs(texts, feature, min_context_words=5)         # DatasetDict train/validation/test
    neutral = mine_neutral(texts, feature)                           # no he/she, nor him/his/her/...
    collate = collator_for(tokenizer, "causal_lm")                  # or "masked_lm"
    batch = collate([pairs["train"][i] for i in range(8)])

    # he/she template rows: neutral contexts (stereotypical vs anti-stereotypical), controls, training rows
    search_rows = neutral_context_rows(feature, "search")    # the rewrite search's rows
    report_rows = neutral_context_rows(feature, "report")    # other templates, other occupations
    controls = context_controls(feature, "search")           # "My mother said that [MASK] ..."
    names = name_rows(feature)                               # DatasetDict, like mine_pairs

Nothing here loads a model or touches the network unless a Hub dataset id is given as the source.
"""

from .attributes import ATTRIBUTE_FRAMES, ATTRIBUTE_WORDS, attribute_evaluation_rows, attribute_rows, attribute_words
from .class_pairs import pair_adapter_names, pair_feature, pair_label, pairs_of_classes, parse_class_pairs
from .collators import OBJECTIVES, CausalLMCollator, MaskedLMCollator, check_single_token, collator_for
from .corpora import available_corpora, corpus_info, load_corpus, load_names
from .feature import MASK_PLACEHOLDER, Feature, copy_casing
from .mining import PAIR_COLUMNS, SPLITS, MiningReport, mine_pairs
from .neutral import PRONOUN_FORMS, mine_neutral, related_forms
from .occupations import EVALUATION_SPLITS, Occupation, load_occupations, occupation_split
from .definitional import DEFINITIONAL_NOUNS, DefinitionalNoun, definitional_nouns
from .templates import (
    REPORT_TEMPLATES,
    SEARCH_TEMPLATES,
    TRAIN_TEMPLATES,
    clear_names,
    context_controls,
    neutral_context_rows,
    pronoun_classes,
)
from .text import iter_sentences, split_sentences
from .training_rows import definitional_rows, name_rows, occupation_rows

__all__ = [
    "ATTRIBUTE_FRAMES",
    "ATTRIBUTE_WORDS",
    "PRONOUN_FORMS",
    "EVALUATION_SPLITS",
    "DEFINITIONAL_NOUNS",
    "MASK_PLACEHOLDER",
    "OBJECTIVES",
    "PAIR_COLUMNS",
    "REPORT_TEMPLATES",
    "SEARCH_TEMPLATES",
    "SPLITS",
    "TRAIN_TEMPLATES",
    "CausalLMCollator",
    "DefinitionalNoun",
    "Feature",
    "MaskedLMCollator",
    "MiningReport",
    "Occupation",
    "attribute_evaluation_rows",
    "attribute_rows",
    "attribute_words",
    "available_corpora",
    "check_single_token",
    "clear_names",
    "collator_for",
    "context_controls",
    "copy_casing",
    "definitional_nouns",
    "definitional_rows",
    "corpus_info",
    "iter_sentences",
    "load_corpus",
    "load_names",
    "load_occupations",
    "mine_neutral",
    "related_forms",
    "mine_pairs",
    "name_rows",
    "neutral_context_rows",
    "occupation_rows",
    "occupation_split",
    "pair_adapter_names",
    "pair_feature",
    "pair_label",
    "pairs_of_classes",
    "parse_class_pairs",
    "pronoun_classes",
    "split_sentences",
]
