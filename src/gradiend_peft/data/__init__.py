"""Data for GRADIEND: features, mined training rows, neutral text, collators and embedded corpora.

Typical use::

    from gradiend_peft.data import Feature, load_corpus, mine_pairs, mine_neutral, collator_for

    feature = Feature(classes={"SG": ["is", "was"], "PL": ["are", "were"]}, name="number")
    texts = load_corpus("english")
    pairs = mine_pairs(texts, feature, min_context_words=5)         # DatasetDict train/validation/test
    neutral = mine_neutral(texts, feature, exclude_words=["be"])    # no is/was/are/were, nor "be"
    collate = collator_for(tokenizer, "causal_lm")                  # or "masked_lm"
    batch = collate([pairs["train"][i] for i in range(8)])

The template rows of the bias study (neutral contexts, controls, training rows) are in `gradiend_peft.bias`.

Nothing here loads a model or touches the network unless a Hub dataset id is given as the source.
"""

from .class_pairs import pair_adapter_names, pair_feature, pair_label, pairs_of_classes, parse_class_pairs
from .collators import OBJECTIVES, CausalLMCollator, MaskedLMCollator, check_single_token, collator_for
from .corpora import available_corpora, corpus_info, load_corpus
from .feature import MASK_PLACEHOLDER, Feature, copy_casing
from .mining import PAIR_COLUMNS, SPLITS, MiningReport, mine_pairs
from .neutral import mine_neutral
from .text import iter_sentences, split_sentences

__all__ = [
    "MASK_PLACEHOLDER",
    "OBJECTIVES",
    "PAIR_COLUMNS",
    "SPLITS",
    "CausalLMCollator",
    "Feature",
    "MaskedLMCollator",
    "MiningReport",
    "available_corpora",
    "check_single_token",
    "collator_for",
    "copy_casing",
    "corpus_info",
    "iter_sentences",
    "load_corpus",
    "mine_neutral",
    "mine_pairs",
    "pair_adapter_names",
    "pair_feature",
    "pair_label",
    "pairs_of_classes",
    "parse_class_pairs",
    "split_sentences",
]
