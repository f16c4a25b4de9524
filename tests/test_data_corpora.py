"""The corpora shipped in the package: integrity, licences, and the rows they yield."""

import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from gradiend_peft.bias.gender import load_names
from gradiend_peft.data import Feature, available_corpora, corpus_info, load_corpus, mine_pairs

FOLDER = resources.files("gradiend_peft").joinpath("corpora")
MANIFEST = json.loads(FOLDER.joinpath("manifest.json").read_text(encoding="utf-8"))
REPO = Path(__file__).resolve().parents[1]


def test_corpus_names_and_their_parts():
    corpora = available_corpora()
    assert corpora["english"] == ["wordnet", "web"]
    assert corpora["german"] == ["fortunes-de"]
    assert corpora["web"] == ["web"]
    with pytest.raises(ValueError, match="unknown corpus 'klingon'.*'english'"):
        load_corpus("klingon")


@pytest.mark.parametrize("part", sorted(MANIFEST["corpora"]))
def test_each_shipped_file_matches_its_manifest_entry_and_names_its_licence(part):
    entry = MANIFEST["corpora"][part]
    data = FOLDER.joinpath(entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    sentences = load_corpus(part)
    assert len(sentences) == entry["sentences"] == len(set(sentences))
    assert all(s == " ".join(s.split()) and s for s in sentences)
    for licence in entry["licence_file"].split(", "):
        assert FOLDER.joinpath(licence).is_file(), licence
    assert entry["licence"] and entry["source"]


def test_the_corpora_folder_stays_small():
    total = sum(p.stat().st_size for p in Path(str(FOLDER)).rglob("*") if p.is_file())
    assert total < 4_000_000


def test_the_english_corpus_yields_thousands_of_he_and_she_rows():
    english = load_corpus("english")
    assert len(english) == corpus_info("english")["sentences"] > 90_000
    _, report = mine_pairs(english, {"M": ["he"], "F": ["she"]}, return_report=True)
    assert report.occurrences["M"] > 15_000 and report.occurrences["F"] > 3_000
    rows, report = mine_pairs(english, {"M": ["he"], "F": ["she"]}, min_context_words=5, return_report=True)
    assert report.occurrences["M"] > 6_000 and report.occurrences["F"] > 800
    assert len(rows["train"]) + len(rows["validation"]) + len(rows["test"]) == 2 * report.occurrences["F"]


def test_the_german_corpus_yields_pronoun_and_article_rows():
    german = load_corpus("german")
    _, pronouns = mine_pairs(german, {"M": ["er"], "F": ["sie"]}, return_report=True)
    assert pronouns.occurrences["M"] > 2_000 and pronouns.occurrences["F"] > 3_000
    articles = Feature(classes={"der": ["der"], "die": ["die"], "das": ["das"]}, pair=("der", "die"))
    _, report = mine_pairs(german, articles, return_report=True)
    assert min(report.occurrences.values()) > 9_000


def test_first_name_lists_are_most_frequent_first():
    assert load_names("female", top=3) == ["Mary", "Patricia", "Linda"]
    assert load_names("male", top=3) == ["James", "John", "Robert"]
    assert len(load_names("male")) == MANIFEST["names"]["kinds"]["male"]
    with pytest.raises(ValueError, match="choose one of"):
        load_names("girls")


@pytest.mark.slow
@pytest.mark.skipif(
    not all(Path(p).exists() for p in ("/usr/share/wordnet", "/usr/share/sword/modules", "/usr/share/games/fortunes/de")),
    reason="needs the Debian packages wordnet-base, sword-text-web and fortunes-de",
)
def test_the_build_script_reproduces_the_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_corpora.py"), "--out", str(tmp_path)], check=True)
    built = json.loads((tmp_path / "manifest.json").read_text())
    for part, entry in MANIFEST["corpora"].items():
        assert built["corpora"][part]["sha256"] == entry["sha256"], part
