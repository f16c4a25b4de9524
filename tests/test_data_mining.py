"""mine_pairs: exact rows from hand-written text, balancing, splits, held-out words, seeds, errors."""

import logging
from collections import Counter

import datasets
import pytest

from gradiend_peft.data import MASK_PLACEHOLDER, PAIR_COLUMNS, SPLITS, Feature, mine_pairs
from tiny import word_tokenizer

GENDER = {"M": ["he"], "F": ["she"]}


def all_rows(result):
    return [row for split in SPLITS for row in result[split]]


def as_tuples(rows):
    keys = ("text", "factual", "alternative", "factual_class", "alternative_class", "label")
    return sorted(tuple(row[k] for k in keys) for row in rows)


def test_hand_written_texts_give_exactly_the_expected_rows():
    texts = [
        "He said that she would come.",
        'There, the nurse\'s sister said: "SHE\'S here!"',
        "Then he'd left; she-wolves howled.",
        "Theme: the shed, ashes, hence, hers.",
        "The sheriff asked whether he or she knew. (She) did.",
    ]
    result = mine_pairs(texts, GENDER, balance=False, split_ratios=(1, 0, 0))
    expected = [
        ("[MASK] said that she would come.", "He", "She", "M", "F", 1.0),
        ("He said that [MASK] would come.", "she", "he", "F", "M", -1.0),
        ('There, the nurse\'s sister said: "[MASK]\'S here!"', "SHE", "HE", "F", "M", -1.0),
        ("Then [MASK]'d left; she-wolves howled.", "he", "she", "M", "F", 1.0),
        ("The sheriff asked whether [MASK] or she knew.", "he", "she", "M", "F", 1.0),
        ("The sheriff asked whether he or [MASK] knew.", "she", "he", "F", "M", -1.0),
        ("([MASK]) did.", "She", "He", "F", "M", -1.0),
    ]
    assert as_tuples(result["train"]) == sorted(expected)
    assert len(result["validation"]) == len(result["test"]) == 0
    assert set(result["train"]["split"]) == {"train"}


def test_columns_and_types_follow_the_contract_and_survive_save_and_load(tmp_path):
    texts = [f"At {i} he came and she went." for i in range(10)]
    result = mine_pairs(texts, GENDER)
    assert isinstance(result, datasets.DatasetDict)
    assert list(result) == list(SPLITS)
    for split in SPLITS:
        assert result[split].column_names == list(PAIR_COLUMNS)
        assert result[split].features["label"].dtype == "float32"
    result.save_to_disk(str(tmp_path / "rows"))
    again = datasets.load_from_disk(str(tmp_path / "rows"))
    assert all(again[s].to_list() == result[s].to_list() for s in SPLITS)


def test_every_text_has_exactly_one_slot_and_filling_it_restores_the_sentence():
    texts = ["He and she and he again.", "She? He! she."]
    result = mine_pairs(texts, GENDER, balance=False, split_sentences=False)
    rows = all_rows(result)
    assert len(rows) == 6
    for row in rows:
        assert row["text"].count(MASK_PLACEHOLDER) == 1
        assert row["text"].replace(MASK_PLACEHOLDER, row["factual"]) in texts


def test_min_context_words_counts_words_before_the_slot():
    texts = ["She came.", "Then she came.", "And then she came.", "Then he came.", "So, and then, he came."]
    result, report = mine_pairs(texts, GENDER, balance=False, min_context_words=2, return_report=True)
    assert as_tuples(all_rows(result)) == [
        ("And then [MASK] came.", "she", "he", "F", "M", -1.0),
        ("So, and then, [MASK] came.", "he", "she", "M", "F", 1.0),
    ]
    assert report.skipped_short_context == 3
    # a class left empty only by the filter: the error names the filter
    with pytest.raises(ValueError, match=r"class 'F' \(words \['she'\]\).*min_context_words=2"):
        mine_pairs(texts[:2] + texts[3:], GENDER, min_context_words=2)


def test_balancing_keeps_as_many_rows_per_class_as_the_rarest_class_has():
    texts = [f"Story {i}: he came." for i in range(30)] + [f"Story {i}: she came." for i in range(10)]
    result, report = mine_pairs(texts, GENDER, return_report=True)
    classes = Counter(r["factual_class"] for r in all_rows(result))
    assert classes == {"M": 10, "F": 10}
    assert report.occurrences == {"M": 30, "F": 10}
    assert report.rows == {"train": {"M": 8, "F": 8}, "validation": {"M": 1, "F": 1}, "test": {"M": 1, "F": 1}}
    unbalanced = mine_pairs(texts, GENDER, balance=False, max_rows_per_class=20)
    assert Counter(r["factual_class"] for r in all_rows(unbalanced)) == {"M": 20, "F": 10}


def test_splits_are_disjoint_and_follow_the_ratios_per_class():
    texts = [f"Row {i}: he came." for i in range(50)] + [f"Line {i}: she came." for i in range(50)]
    result = mine_pairs(texts, GENDER, split_ratios=(0.6, 0.2, 0.2))
    for split, n in (("train", 30), ("validation", 10), ("test", 10)):
        assert Counter(result[split]["factual_class"]) == {"M": n, "F": n}
    texts_per_split = [set(result[s]["text"]) for s in SPLITS]
    assert sum(len(t) for t in texts_per_split) == len(set().union(*texts_per_split)) == 100


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_ones():
    texts = [f"Line {i}: he or him, she or her, {i}." for i in range(40)]
    feature = Feature(classes={"M": ["he", "him"], "F": ["she", "her"]})
    first = mine_pairs(texts, feature, seed=3)
    second = mine_pairs(texts, feature, seed=3)
    other = mine_pairs(texts, feature, seed=4)
    assert all(first[s].to_list() == second[s].to_list() for s in SPLITS)
    assert any(first[s].to_list() != other[s].to_list() for s in SPLITS)


def test_alternatives_are_drawn_by_frequency_and_never_unseen_words():
    # "he" occurs 3 times as often as "him"; "hers" never occurs
    texts = [f"Line {i}: he, he, he and him." for i in range(100)] + [f"Row {i}: she." for i in range(400)]
    feature = Feature(classes={"M": ["he", "him"], "F": ["she", "hers"]})
    rows = all_rows(mine_pairs(texts, feature, balance=False))
    f_alternatives = Counter(r["alternative"] for r in rows if r["factual_class"] == "F")
    assert set(f_alternatives) == {"he", "him"}
    share = f_alternatives["he"] / 400
    assert 0.68 < share < 0.82  # 0.75 expected; 400 draws give a standard deviation of 0.022
    assert {r["alternative"] for r in rows if r["factual_class"] == "M"} == {"she"}


def test_held_out_words_go_to_their_split_and_are_never_alternatives_elsewhere():
    texts = [f"Line {i}: he saw him and she saw her." for i in range(40)]
    feature = Feature(classes={"M": ["he", "him"], "F": ["she", "her"]})
    result = mine_pairs(texts, feature, held_out_words=["him"], balance=False)
    assert "him" in result["test"]["factual"]
    for split in ("train", "validation"):
        assert "him" not in result[split]["factual"]
        assert "him" not in result[split]["alternative"]
    by_split = mine_pairs(texts, feature, held_out_words={"validation": ["her"]}, balance=False)
    assert set(by_split["validation"]["factual"]) >= {"her"}
    assert "her" not in list(by_split["train"]["factual"]) + list(by_split["train"]["alternative"])


def test_a_class_with_more_than_two_of_a_feature_makes_rows_only_for_the_pair():
    feature = Feature(classes={"der": ["der"], "die": ["die"], "das": ["das"]}, pair=("der", "die"))
    rows = all_rows(mine_pairs(["Der Hund sah die Katze und das Haus."], feature, balance=False))
    assert as_tuples(rows) == sorted(
        [
            ("[MASK] Hund sah die Katze und das Haus.", "Der", "Die", "der", "die", 1.0),
            ("Der Hund sah [MASK] Katze und das Haus.", "die", "der", "die", "der", -1.0),
        ]
    )


def test_duplicate_sentences_and_sentences_with_a_slot_are_skipped():
    texts = ["He came.", "He came.", "She said [MASK] came.", "She went."]
    result, report = mine_pairs(texts, GENDER, balance=False, return_report=True)
    assert sorted(r["text"] for r in all_rows(result)) == ["[MASK] came.", "[MASK] went."]
    assert (report.duplicates, report.skipped_with_placeholder) == (1, 1)
    kept = mine_pairs(texts, GENDER, balance=False, deduplicate=False)
    assert len(all_rows(kept)) == 3


def test_a_tokenizer_reports_targets_it_splits(caplog):
    with caplog.at_level(logging.WARNING, logger="gradiend_peft.data.mining"):
        mine_pairs(["He came. She went."], GENDER, tokenizer=word_tokenizer("gpt2"))
    assert "'She': ['S', 'he']" in caplog.text


@pytest.mark.parametrize(
    "texts, kwargs, error, message",
    [
        ([], {}, ValueError, "no text to mine"),
        (["", "   "], {}, ValueError, "no text to mine"),
        (["fine", None], {}, TypeError, "text 1 is a NoneType"),
        (["He came home."], {}, ValueError, r"class 'F' \(words \['she'\]\) has no rows in 1 sentences"),
        (["He came. She went."], {"split_ratios": (0.5, 0.5)}, ValueError, "three non-negative numbers"),
        (["He came. She went."], {"split_ratios": (0.8, 0.3, 0.1)}, ValueError, "sum to 1"),
        (["He came. She went."], {"held_out_words": ["it"]}, ValueError, "'it' is not a target word"),
        (["He came. She went."], {"held_out_words": {"dev": ["he"]}}, ValueError, "split 'dev'"),
        (["He came. She went."], {"held_out_words": ["he"]}, ValueError, "no alternative for class 'F'"),
        (["He came. She went."], {"max_rows_per_class": 0}, ValueError, "max_rows_per_class"),
        (["He came. She went."], {"context_chars": 0}, ValueError, "context_chars must be a positive integer"),
        (["He came. She went."], {"context_chars": "80"}, ValueError, "context_chars must be a positive integer"),
    ],
)
def test_bad_input_gets_a_clear_error(texts, kwargs, error, message):
    with pytest.raises(error, match=message):
        mine_pairs(texts, GENDER, **kwargs)


def test_a_feature_must_be_a_feature_or_a_mapping():
    with pytest.raises(TypeError, match="mapping of classes to words"):
        mine_pairs(["He came."], ["he", "she"])
