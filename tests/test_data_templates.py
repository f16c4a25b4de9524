"""Template rows for he/she: neutral contexts, controls, name and occupation training rows, the occupation table."""

import csv
import fnmatch
import gzip
import hashlib
import io
import json
import re
import tomllib
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from gradiend_peft.data import PAIR_COLUMNS, Feature, collator_for, mine_pairs
from gradiend_peft.bias.gender import (
    REPORT_TEMPLATES,
    SEARCH_TEMPLATES,
    TRAIN_TEMPLATES,
    context_controls,
    definitional_rows,
    load_names,
    load_occupations,
    name_rows,
    neutral_context_rows,
    occupation_rows,
)
from tiny import word_tokenizer

GENDER = Feature(classes={"M": ["he"], "F": ["she"]})
FOLDER = resources.files("gradiend_peft").joinpath("corpora")
REPO = Path(__file__).resolve().parents[1]

# Written here, not taken from the package: words that would let the context decide the pronoun.
GENDERED_WORDS = set(
    "he she his her hers him himself herself man woman men women boy girl boys girls mother father mom dad "
    "sister brother aunt uncle niece nephew son daughter wife husband queen king prince princess lady "
    "gentleman sir madam mr mrs ms miss actress waitress bride groom girlfriend boyfriend grandmother "
    "grandfather stepmother stepfather duke duchess nun monk landlady landlord chairman chairwoman".split()
)
# Written here too: every word that may decide a control's pronoun, by gender (a definitional noun's two forms).
FEMALE_NOUNS = set("mother mom sister wife daughter grandmother aunt girlfriend grandma niece granddaughter stepmother "
                   "stepdaughter stepsister godmother goddaughter queen princess duchess empress tsarina priestess "
                   "baroness abbess Mrs. actress waitress policewoman businesswoman chairwoman spokeswoman hostess "
                   "heroine landlady headmistress congresswoman stewardess saleswoman sportswoman councilwoman "
                   "camerawoman horsewoman fisherwoman woman girl lady bride widow nun schoolgirl housewife witch "
                   "cowgirl heiress sorceress".split())
MALE_NOUNS = set("father dad brother husband son grandfather uncle boyfriend grandpa nephew grandson stepfather "
                 "stepson stepbrother godfather godson king prince duke emperor tsar priest baron abbot Mr. actor "
                 "waiter policeman businessman chairman spokesman host hero landlord headmaster congressman steward "
                 "salesman sportsman councilman cameraman horseman fisherman man boy gentleman groom widower monk "
                 "schoolboy househusband wizard cowboy heir sorcerer".split())
NOUN_KINDS = {"kinship", "title", "role", "person"}


def read_table():
    """The shipped occupation table, read with csv: {noun: share of women}, the WinoGender figure first."""
    text = FOLDER.joinpath("occupations.en.tsv").read_text(encoding="utf-8")
    table = {}
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        table[row["occupation"]] = float(row["winogender_bls_pct_female"] or row["winobias_bls_pct_female"])
    return table


def census():
    with FOLDER.joinpath("names.en.json.gz").open("rb") as raw, gzip.open(raw, "rt") as handle:
        return {kind: dict(rows) for kind, rows in json.load(handle).items()}


def context(row):
    """The row's text without the slot, as lower-case words."""
    return re.findall(r"[a-z]+", row["text"].replace("[MASK]", " ").lower())


def frame(text, subject):
    """The text with its subject replaced by a placeholder: the template it was made from."""
    assert subject in text, (subject, text)
    return text.replace(subject, "<S>", 1)


def frames(templates):
    """The templates with their subject placeholder written as in :func:`frame`."""
    return {t.replace("{Subject}", "<S>").replace("{subject}", "<S>") for t in templates.values()}


@pytest.fixture(scope="module")
def neutral():
    return {split: list(neutral_context_rows(GENDER, split)) for split in ("search", "report")}


@pytest.fixture(scope="module")
def controls():
    return {split: list(context_controls(GENDER, split)) for split in ("search", "report")}


def test_the_template_sets_are_disjoint_and_have_one_subject_pronoun_slot_after_some_text():
    sets = [SEARCH_TEMPLATES, REPORT_TEMPLATES, TRAIN_TEMPLATES]
    assert len(SEARCH_TEMPLATES) >= 8 and len(REPORT_TEMPLATES) >= 8 and len(TRAIN_TEMPLATES) >= 20
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not set(a) & set(b) and not set(a.values()) & set(b.values())
    for template in [t for s in sets for t in s.values()]:
        assert template.count("[MASK]") == 1 and template.split("[MASK]")[0].strip(), template
        assert not template.startswith("{"), template  # a text-initial subject is barely used without a BOS token
        assert not set(context({"text": template})) & GENDERED_WORDS, template


def test_search_and_report_share_no_template_no_noun_and_no_frame(neutral):
    search, report = neutral["search"], neutral["report"]
    assert not {r["template"] for r in search} & {r["template"] for r in report}
    assert not {r["noun"] for r in search} & {r["noun"] for r in report}
    frames = {s: {frame(r["text"], r["noun"]) for r in rows} for s, rows in neutral.items()}
    assert not frames["search"] & frames["report"]
    # another split seed draws other nouns, still disjoint
    other = {s: set(neutral_context_rows(GENDER, s, split_seed=7)["noun"]) for s in ("search", "report")}
    assert not other["search"] & other["report"] and other["search"] != {r["noun"] for r in search}


def test_neutral_rows_cover_each_split_with_one_slot_and_no_gendered_context(neutral):
    table = read_table()
    for split, rows in neutral.items():
        nouns = {r["noun"] for r in rows}
        assert len(nouns) >= 35 and len({r["template"] for r in rows}) >= 8
        assert Counter(r["factual_class"] for r in rows)["M"] == Counter(r["factual_class"] for r in rows)["F"]
        for row in rows:
            assert row["text"].count("[MASK]") == 1 and row["split"] == split
            assert f"the {row['noun']}" in row["text"] and row["noun"] in table
            assert not set(context(row)) & GENDERED_WORDS, row["text"]
            assert {row["factual"].lower(), row["alternative"].lower()} == {"he", "she"}


def test_stereotype_tags_follow_the_bls_share_of_the_shipped_table(neutral):
    table = read_table()
    rows = neutral["search"] + neutral["report"]
    for row in rows:
        expected = "she" if table[row["noun"]] >= 50 else "he"
        assert row["factual"].lower() == expected, row
        assert row["stereotype"] == row["factual_class"] == ("F" if expected == "she" else "M")
        assert row["label"] == (1.0 if expected == "he" else -1.0)
        assert row["pct_female"] == pytest.approx(table[row["noun"]])
    by_noun = {r["noun"]: r["factual"].lower() for r in rows}
    # a few by hand: WinoGender figures (nurse 89.58, carpenter 2.07), WinoBias-only ones (CEO 39, tailor 80)
    checks = {"nurse": "she", "carpenter": "he", "CEO": "he", "tailor": "she", "salesperson": "he", "secretary": "she"}
    assert all(by_noun[noun] == pronoun for noun, pronoun in checks.items() if noun in by_noun)
    assert sum(noun in by_noun for noun in checks) >= 4


def test_the_occupation_table_is_shipped_with_its_licences_and_listed_as_package_data():
    manifest = json.loads(FOLDER.joinpath("manifest.json").read_text(encoding="utf-8"))
    entry = manifest["occupations"]
    data = FOLDER.joinpath(entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    for licence in entry["licence_file"].split(", "):
        assert "MIT License" in FOLDER.joinpath(licence).read_text(encoding="utf-8")
    assert len(read_table()) == entry["occupations"] == len(load_occupations()) == 80
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gradiend_peft"]
    assert any(fnmatch.fnmatch(f"corpora/{entry['file']}", p) for p in patterns)
    readme = FOLDER.joinpath("README.md").read_text(encoding="utf-8")
    assert "occupations.en.tsv" in readme and "winogender-schemas" in readme and "corefBias" in readme


def test_controls_are_balanced_per_split_and_their_subject_decides_the_class(controls):
    shares = census()
    for split, rows in controls.items():
        assert len(rows) >= 100
        assert Counter(r["factual_class"] for r in rows) == {"M": len(rows) // 2, "F": len(rows) // 2}
        assert {r["template"] for r in rows} == set(SEARCH_TEMPLATES if split == "search" else REPORT_TEMPLATES)
        for row in rows:
            assert row["text"].count("[MASK]") == 1
            female = row["factual_class"] == "F"
            assert row["factual"].lower() == ("she" if female else "he")
            if row["cue_kind"] in NOUN_KINDS:
                side = FEMALE_NOUNS if female else MALE_NOUNS
                assert row["cue"] in side and re.search(rf"(^|\s){re.escape(row['cue'])}\s", row["text"]), row
            else:
                assert row["cue_kind"] == "name"
                kind, other = ("female", "male") if female else ("male", "female")
                assert re.search(rf"\b{row['cue']}\b", row["text"]) and row["cue"] in load_names(kind)
                assert shares[kind][row["cue"]] >= 20 * shares[other].get(row["cue"], 0.0), row["cue"]
    cues = {s: {r["cue"] for r in rows} for s, rows in controls.items()}
    assert not cues["search"] & cues["report"]
    for split in ("search", "report"):
        everything = context_controls(GENDER, split, count=None)
        kinds = Counter(everything["cue_kind"])
        assert sum(kinds[k] for k in NOUN_KINDS) >= 200 and all(kinds[k] > 0 for k in NOUN_KINDS), kinds
        nouns_only = context_controls(GENDER, split, count=200, names_share=0.0)
        assert len(nouns_only) == 200 and set(nouns_only["cue_kind"]) <= NOUN_KINDS
        every_noun = context_controls(GENDER, split, count=None, names_share=0.0)
        assert set(every_noun["cue_kind"]) <= NOUN_KINDS and len(every_noun) == sum(kinds[k] for k in NOUN_KINDS)
        assert Counter(controls[split][i]["cue_kind"] == "name" for i in range(len(controls[split])))[True] == 50
    # no control noun is in the training pool (definitional_rows), nor in both evaluation splits
    every = {s: set(context_controls(GENDER, s, count=None)["cue"]) for s in ("search", "report")}
    train_rows = definitional_rows(GENDER, names_per_class=0)
    train_cues = {w for r in train_rows["train"] for w in r["text"].replace(",", " ").split()
                  if w in FEMALE_NOUNS | MALE_NOUNS}
    assert train_cues and not train_cues & (every["search"] | every["report"])
    assert not every["search"] & every["report"]


def test_name_rows_have_the_mined_columns_held_out_names_and_labels_by_pair_order():
    mined = mine_pairs(["She said that he would come."] * 1, GENDER, balance=False, split_ratios=(1, 0, 0))
    rows = name_rows(GENDER, names_per_class=100, rows_per_name=3, seed=1)
    assert list(rows) == ["train", "validation", "test"]
    template_words = set(re.findall(r"[A-Z][a-z]+", " ".join(TRAIN_TEMPLATES.values())))  # "In" is a census name
    every_name = (set(load_names("female")) | set(load_names("male"))) - template_words
    names = {}
    for split, dataset in rows.items():
        assert tuple(dataset.column_names) == PAIR_COLUMNS == tuple(mined["train"].column_names)
        assert dataset.features == mined["train"].features
        assert Counter(dataset["factual_class"]) == {"M": len(dataset) // 2, "F": len(dataset) // 2}
        names[split] = set()
        for row in dataset:
            found = [w for w in re.findall(r"[A-Z][a-z]+", row["text"]) if w in every_name]
            assert len(found) == 1 and row["text"].count("[MASK]") == 1, row["text"]
            names[split].add(found[0])
            kind = "female" if row["factual"].lower() == "she" else "male"
            assert found[0] in load_names(kind) and row["split"] == split
            assert row["label"] == (1.0 if row["factual_class"] == "M" else -1.0)
            assert frame(row["text"], found[0]) in frames(TRAIN_TEMPLATES)
    assert len(rows["train"]) == 2 * 80 * 3 and len(rows["test"]) == 2 * 10 * 3
    assert not names["train"] & names["test"] and not names["train"] & names["validation"]
    control_names = {r["cue"] for s in ("search", "report") for r in context_controls(GENDER, s, count=None)}
    assert not control_names & set().union(*names.values())
    # the pair's order sets the labels: she first gives she rows +1
    swapped = name_rows(Feature(classes={"F": ["she"], "M": ["he"]}), names_per_class=10, rows_per_name=1)
    assert all((r["label"] == 1.0) == (r["factual"].lower() == "she") for r in swapped["train"])


def test_occupation_rows_avoid_the_report_split_and_are_balanced():
    rows = occupation_rows(GENDER)
    report = set(neutral_context_rows(GENDER, "report")["noun"])
    table = read_table()
    seen = {}
    for split, dataset in rows.items():
        assert tuple(dataset.column_names) == PAIR_COLUMNS and len(dataset) > 0
        assert Counter(dataset["factual_class"])["M"] == Counter(dataset["factual_class"])["F"]
        seen[split] = set()
        for row in dataset:
            noun = next(n for n in sorted(table, key=len, reverse=True) if f"the {n}" in row["text"].lower())
            seen[split].add(noun)
            assert noun not in report and abs(table[noun] - 50) >= 10
            assert row["factual"].lower() == ("she" if table[noun] >= 50 else "he")
            subject = f"The {noun}" if row["text"].startswith("The ") else f"the {noun}"
            assert frame(row["text"], subject) in frames(TRAIN_TEMPLATES)
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]


def test_the_same_seed_gives_the_same_rows_and_another_seed_another_order():
    a = neutral_context_rows(GENDER, "search", seed=3)
    assert a["text"] == neutral_context_rows(GENDER, "search", seed=3)["text"]
    b = neutral_context_rows(GENDER, "search", seed=4)
    assert a["text"] != b["text"] and sorted(a["text"]) == sorted(b["text"])  # balancing does not depend on the seed
    unbalanced = neutral_context_rows(GENDER, "search", balance=False)
    table = read_table()
    male = {n for n in unbalanced["noun"] if table[n] < 50}
    assert set(unbalanced["noun"]) - set(a["noun"]) == {min(male, key=lambda n: abs(table[n] - 50))}
    small = neutral_context_rows(GENDER, "search", max_rows=40, seed=3)
    assert len(small) == 40 and Counter(small["factual_class"]) == {"M": 20, "F": 20}
    c1, c2 = context_controls(GENDER, "search", seed=5), context_controls(GENDER, "search", seed=6)
    assert c1["text"] == context_controls(GENDER, "search", seed=5)["text"] and c1["text"] != c2["text"]
    n1, n2 = name_rows(GENDER, names_per_class=20, seed=5), name_rows(GENDER, names_per_class=20, seed=6)
    assert n1["train"]["text"] == name_rows(GENDER, names_per_class=20, seed=5)["train"]["text"]
    assert n1["train"]["text"] != n2["train"]["text"]
    assert occupation_rows(GENDER, seed=2)["train"]["text"] == occupation_rows(GENDER, seed=2)["train"]["text"]


@pytest.mark.parametrize("classes", [{"3SG": ["he", "she"], "3PL": ["they"]}, {"A": ["it"], "B": ["they"]}])
@pytest.mark.parametrize("make", [neutral_context_rows, context_controls, name_rows, occupation_rows])
def test_a_feature_without_he_and_she_in_two_classes_is_refused(classes, make):
    with pytest.raises(ValueError, match="'he' and 'she'"):
        make(Feature(classes=classes))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        neutral_context_rows(GENDER, "test")
    with pytest.raises(ValueError, match="count must be between"):
        context_controls(GENDER, "search", count=10_000)
    with pytest.raises(ValueError, match="names_per_class"):
        name_rows(GENDER, names_per_class=100_000)
    with pytest.raises(ValueError, match="min_margin"):
        occupation_rows(GENDER, min_margin=49)


def test_rows_go_through_the_causal_and_masked_lm_collators_of_the_tiny_tokenizers(neutral, controls):
    gpt2 = word_tokenizer("gpt2")
    # the tiny vocabulary has "nurse", "mother", "father"...; a capitalised "She" is several tokens there
    rows = [r for r in neutral["search"] if r["noun"] == "nurse" and r["factual"] == "she"]
    rows += [r for r in context_controls(GENDER, "report", count=None)
             if r["cue"] in ("mother", "father", "sister", "brother", "son", "daughter") and r["factual"].islower()][:6]
    assert len(rows) >= 8
    batch = collator_for(gpt2, "causal_lm")(rows)
    for i, row in enumerate(rows):
        position = int((batch["factual_labels"][i] != -100).nonzero()[0, 0])
        assert gpt2.decode([int(batch["factual_labels"][i, position])]) == " " + row["factual"]
        assert gpt2.decode([int(batch["alternative_labels"][i, position])]) == " " + row["alternative"]
        prefix = row["text"].split("[MASK]")[0].rstrip()
        assert gpt2.decode(batch["input_ids"][i, : position + 1]) == prefix
    masked = collator_for(word_tokenizer("bert"), "masked_lm")(rows)
    assert int((masked["factual_labels"] != -100).sum()) == len(rows)


def test_the_docs_page_lists_every_evaluation_template():
    page = (REPO / "docs" / "neutral_context.md").read_text(encoding="utf-8")
    for template in list(SEARCH_TEMPLATES.values()) + list(REPORT_TEMPLATES.values()):
        assert template in page, template
    assert "neutral_context.md" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")
