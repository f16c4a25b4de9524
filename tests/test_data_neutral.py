"""mine_neutral: sentences free of every feature word and excluded word."""

import datasets
import pytest

from gradiend_peft.bias.gender import related_forms
from gradiend_peft.data import Feature, mine_neutral

TEXTS = [
    "He came home. The dog ran. There she was.",
    "Theirs is the shed by the sea. They left.",
    "The dog ran.",
    "His hat fell. Her hat stayed. A [MASK] here.",
    "Short.",
]


def test_neutral_sentences_contain_no_word_of_any_class():
    feature = Feature(classes={"3SG": ["he", "she"], "3PL": ["they"]})
    result = mine_neutral(TEXTS, feature)  # only the feature's words
    assert isinstance(result, datasets.Dataset)
    assert result.column_names == ["text"]
    assert list(result["text"]) == ["The dog ran.", "Theirs is the shed by the sea.", "His hat fell.", "Her hat stayed.", "Short."]


def test_the_other_pronoun_forms_of_the_feature_are_excluded_too():
    feature = Feature(classes={"3SG": ["he", "she"], "3PL": ["they"]})
    assert related_forms(feature) == ["him", "his", "himself", "her", "hers", "herself", "them", "their", "theirs",
                                      "themselves"]
    assert list(mine_neutral(TEXTS, feature, exclude_words=related_forms(feature))["text"]) == ["The dog ran.", "Short."]
    assert related_forms(Feature({"DER": ["der"], "DIE": ["die"]})) == []  # no English pronouns: nothing added


def test_excluded_words_are_matched_whole_and_case_insensitively():
    result = mine_neutral(TEXTS, {"M": ["he"], "F": ["she"]}, exclude_words=["his", "HER", "they"], min_words=2)
    assert list(result["text"]) == ["The dog ran.", "Theirs is the shed by the sea."]


def test_word_limits_and_duplicates():
    result = mine_neutral(TEXTS, {"M": ["he"], "F": ["she"]}, min_words=3, max_words=3)
    assert list(result["text"]) == ["The dog ran.", "His hat fell.", "Her hat stayed."]
    with_duplicates = mine_neutral(TEXTS, {"M": ["he"], "F": ["she"]}, max_words=3, deduplicate=False)
    assert list(with_duplicates["text"]).count("The dog ran.") == 2


def test_max_rows_draws_reproducibly_and_keeps_text_order():
    texts = [f"Sentence number {i} is here." for i in range(50)]
    first = list(mine_neutral(texts, None, exclude_words=["he"], max_rows=10, seed=1)["text"])
    assert first == list(mine_neutral(texts, None, exclude_words=["he"], max_rows=10, seed=1)["text"])
    assert first != list(mine_neutral(texts, None, exclude_words=["he"], max_rows=10, seed=2)["text"])
    assert len(first) == 10
    assert first == sorted(first, key=texts.index)


def test_neutral_mining_refuses_nothing_to_exclude_and_no_result():
    with pytest.raises(ValueError, match="needs a feature or exclude_words"):
        mine_neutral(TEXTS, None)
    with pytest.raises(ValueError, match="none of 2 sentences is neutral"):
        mine_neutral(["He came. She went."], {"M": ["he"], "F": ["she"]})
    with pytest.raises(TypeError, match="not the string"):
        mine_neutral(TEXTS, None, exclude_words="he")
