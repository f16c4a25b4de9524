"""Feature definitions: validation, labels, casing and whole-word matching."""

import pytest

from gradiend_peft.data import Feature, copy_casing
from gradiend_peft.data.feature import word_pattern


def test_binary_feature_labels_first_class_plus_one():
    feature = Feature(classes={"M": ["he"], "F": ["she"]})
    assert feature.pair == ("M", "F")
    assert feature.label_of("M") == 1.0
    assert feature.label_of("F") == -1.0
    assert feature.other_class("M") == "F"
    assert feature.other_class("F") == "M"


def test_class_of_is_case_insensitive_and_words_are_in_class_order():
    feature = Feature(classes={"3SG": ["he", "she", "it"], "3PL": ["they"]})
    assert feature.class_of("SHE") == "3SG"
    assert feature.class_of("They") == "3PL"
    assert feature.words == ("he", "she", "it", "they")
    with pytest.raises(KeyError):
        feature.class_of("him")


def test_more_than_two_classes_needs_a_pair():
    with pytest.raises(ValueError, match="pair="):
        Feature(classes={"der": ["der"], "die": ["die"], "das": ["das"]})
    feature = Feature(classes={"der": ["der"], "die": ["die"], "das": ["das"]}, pair=("die", "das"))
    assert (feature.label_of("die"), feature.label_of("das"), feature.label_of("der")) == (1.0, -1.0, 0.0)
    with pytest.raises(KeyError):
        feature.other_class("der")


@pytest.mark.parametrize(
    "classes, pair, message",
    [
        ({"M": ["he"]}, None, "at least two classes"),
        ({"M": ["he"], "F": []}, None, "no target words"),
        ({"M": "he", "F": ["she"]}, None, "as a list"),
        ({"M": ["he"], "F": ["He"]}, None, "in both class"),
        ({"M": [" he"], "F": ["she"]}, None, "whitespace"),
        ({"M": ["he"], "F": ["she"]}, ("M", "X"), "two different classes"),
        ({"M": ["he"], "F": ["she"]}, ("M", "M"), "two different classes"),
    ],
)
def test_bad_feature_definitions_are_refused_with_the_reason(classes, pair, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Feature(classes=classes, pair=pair)


def test_feature_round_trips_through_a_dict_and_hashes():
    feature = Feature(classes={"M": ["he", "him"], "F": ["she", "her"]}, name="gender")
    again = Feature.from_dict(feature.to_dict())
    assert again == feature
    assert hash(again) == hash(feature)


@pytest.mark.parametrize(
    "template, word, expected",
    [("She", "he", "He"), ("SHE", "he", "HE"), ("she", "he", "he"), ("I", "we", "We"), ("he", "She", "She")],
)
def test_copy_casing(template, word, expected):
    assert copy_casing(template, word) == expected


def test_word_pattern_matches_whole_words_only():
    pattern = word_pattern(["he", "she"])
    text = "He's there; the shed is hers, she'd say. SHE-wolf, he2, he-goat, (he) and “she”."
    assert [m.group(0) for m in pattern.finditer(text)] == ["He", "she", "he", "she"]


def test_word_pattern_with_a_multi_word_target_matches_any_whitespace():
    pattern = word_pattern(["New York"])
    assert [m.group(0) for m in pattern.finditer("new  york, New Yorker, NEW\nYORK")] == ["new  york", "NEW\nYORK"]
