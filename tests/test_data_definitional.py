"""Definitional nouns (three disjoint pools), definitional training rows and attribute rows for he/she."""

import re
from collections import Counter

import pytest

from gradiend_peft.data import PAIR_COLUMNS, Feature
from gradiend_peft.bias.gender import (
    ATTRIBUTE_FRAMES,
    ATTRIBUTE_WORDS,
    DEFINITIONAL_NOUNS,
    TRAIN_TEMPLATES,
    attribute_evaluation_rows,
    attribute_rows,
    attribute_words,
    context_controls,
    definitional_nouns,
    definitional_rows,
)

GENDER = Feature(classes={"M": ["he"], "F": ["she"]})
POOLS = ("train", "search", "report")


def test_the_three_pools_deal_every_noun_once_and_each_holds_every_kind():
    pools = {p: definitional_nouns(p) for p in POOLS}
    dealt = [n for p in POOLS for n in pools[p]]
    assert sorted(dealt, key=repr) == sorted(DEFINITIONAL_NOUNS, key=repr) and len(set(dealt)) == len(dealt)
    kinds = {n.kind for n in DEFINITIONAL_NOUNS}
    assert kinds == {"kinship", "title", "role", "person"}
    for pool in pools.values():
        assert {n.kind for n in pool} == kinds and len(pool) >= 15
    # no word form is in two pools (a form could repeat across pairs)
    forms = {p: {w for n in pools[p] for w in (n.female, n.male)} for p in POOLS}
    assert not forms["train"] & forms["search"] and not forms["train"] & forms["report"]
    assert not forms["search"] & forms["report"]
    assert definitional_nouns("search") == definitional_nouns("search", split_seed=0)
    assert definitional_nouns("search", split_seed=3) != definitional_nouns("search")
    with pytest.raises(ValueError, match="split must be one of"):
        definitional_nouns("test")


def test_a_subject_is_its_determiner_and_form():
    by_female = {n.female: n for n in DEFINITIONAL_NOUNS}
    assert by_female["mother"].subject("male") == "my father"
    assert by_female["queen"].subject("female") == "the queen"
    assert by_female["Mrs."].subject("male", "Miller") == "Mr. Miller"


def test_definitional_rows_use_the_train_pool_with_the_subjects_pronoun_and_hold_out_nouns():
    rows = definitional_rows(GENDER, names_per_class=20)
    forms = {"F": {n.female for n in definitional_nouns("train")}, "M": {n.male for n in definitional_nouns("train")}}
    seen = {}
    for split, dataset in rows.items():
        assert tuple(dataset.column_names) == PAIR_COLUMNS
        assert Counter(dataset["factual_class"]) == {"M": len(dataset) // 2, "F": len(dataset) // 2}
        seen[split] = set()
        for row in dataset:
            assert row["factual"].lower() == ("she" if row["factual_class"] == "F" else "he")
            words = set(re.findall(r"[A-Za-z.]+", row["text"]))
            own = words & forms[row["factual_class"]]
            other = words & forms["M" if row["factual_class"] == "F" else "F"]
            assert not other, row["text"]
            seen[split] |= own
            template = next(t for t in TRAIN_TEMPLATES.values()
                            if re.fullmatch(re.escape(t).replace(r"\{subject\}", ".+").replace(r"\{Subject\}", ".+"),
                                            row["text"]))
            assert template
    assert seen["train"] and not seen["train"] & (seen["validation"] | seen["test"])
    controls = set(context_controls(GENDER, "search", count=None)["cue"]) | set(
        context_controls(GENDER, "report", count=None)["cue"])
    assert not controls & set().union(*seen.values())


def test_attribute_words_and_frames_are_dealt_into_disjoint_pools():
    for kind in ATTRIBUTE_WORDS:
        for gender in ("female", "male"):
            pools = [set(attribute_words(p, kind, gender)) for p in POOLS]
            assert set().union(*pools) == set(ATTRIBUTE_WORDS[kind][gender])
            assert sum(map(len, pools)) == len(ATTRIBUTE_WORDS[kind][gender])
    frames = [{f for fs in ATTRIBUTE_FRAMES[p].values() for f in fs} for p in POOLS]
    assert not frames[0] & frames[1] and not frames[0] & frames[2] and not frames[1] & frames[2]
    # the lean of a few words, by hand
    assert "emotional" in ATTRIBUTE_WORDS["trait"]["female"] and "ambitious" in ATTRIBUTE_WORDS["trait"]["male"]
    assert "nurse" in ATTRIBUTE_WORDS["role"]["female"] and "engineering" in ATTRIBUTE_WORDS["interest"]["male"]
    # a role follows "a": consonant-initial words only
    assert not [w for ws in ATTRIBUTE_WORDS["role"].values() for w in ws if w[0] in "aeiou"]


def test_attribute_rows_come_in_gender_swapped_pairs_of_one_frame_and_two_attributes():
    rows = attribute_evaluation_rows(GENDER, "report", max_pairs=60)
    assert len(rows) == 120
    nouns = {(n.female, n.male) for n in definitional_nouns("report")}
    for first, second in zip(rows.select(range(0, 120, 2)), rows.select(range(1, 120, 2))):
        assert first["pair"] == second["pair"] and first["kind"] == second["kind"]
        assert (first["factual"], first["alternative"]) == (second["alternative"], second["factual"])
        assert {first["factual_class"], second["factual_class"]} == {"F", "M"}
        female, male = (first, second) if first["factual_class"] == "F" else (second, first)
        assert (female["cue"], male["cue"]) in nouns
        assert female["factual"] in attribute_words("report", female["kind"], "female")
        assert male["factual"] in attribute_words("report", male["kind"], "male")
        # the same frame: the texts differ in the subject only
        assert female["text"].replace(female["cue"], "<S>") == male["text"].replace(male["cue"], "<S>") or (
            female["cue"] == "Mrs." and female["text"].replace("Mrs.", "Mr.") == male["text"])
        assert female["text"].endswith("[MASK].") and female["label"] == -1.0 and male["label"] == 1.0


def test_attribute_training_rows_use_the_train_pool_only():
    rows = attribute_rows(GENDER)
    train_words = {w for k in ATTRIBUTE_WORDS for g in ("female", "male") for w in attribute_words("train", k, g)}
    train_frames = {f for fs in ATTRIBUTE_FRAMES["train"].values() for f in fs}
    for split, dataset in rows.items():
        assert tuple(dataset.column_names) == PAIR_COLUMNS and len(dataset) > 0
        assert Counter(dataset["factual_class"])["F"] == Counter(dataset["factual_class"])["M"]
        assert set(dataset["factual"]) | set(dataset["alternative"]) <= train_words
        for text in dataset["text"][:50]:
            assert any(re.fullmatch(re.escape(f).replace(r"\{subject\}", ".+").replace(r"\{Subject\}", ".+"), text)
                       for f in train_frames), text
