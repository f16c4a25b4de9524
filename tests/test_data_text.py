"""Reading text sources and splitting sentences."""

import gzip

import datasets
import pytest

from gradiend_peft.data import iter_sentences, split_sentences
from gradiend_peft.data.text import iter_texts


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He came home. She left!", ["He came home.", "She left!"]),
        ("Dr. Smith came. Then Mr. J. R. Jones left.", ["Dr. Smith came.", "Then Mr. J. R. Jones left."]),
        ("“Why?” he asked. “Because.” She smiled.", ["“Why?” he asked.", "“Because.”", "She smiled."]),
        ("it was e.g. fine. and then lower case continues", ["it was e.g. fine. and then lower case continues"]),
        ("Version 2.5 is out. 3 people came.", ["Version 2.5 is out.", "3 people came."]),
        ("one line\nwrapped here.\n\nnew paragraph without stop", ["one line wrapped here.", "new paragraph without stop"]),
        ("Er kam z.B. spät. Sie nicht.", ["Er kam z.B. spät.", "Sie nicht."]),
        ("   ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_a_list_source_is_split_and_empty_texts_are_skipped():
    assert list(iter_sentences(["He came. She went.", "", "  x  y "])) == ["He came.", "She went.", "x y"]
    assert list(iter_sentences(["He came. She went."], split=False)) == ["He came. She went."]


def test_a_text_file_and_a_gzip_file_are_read_one_text_per_line(tmp_path):
    plain = tmp_path / "texts.txt"
    plain.write_text("He came. She went.\n\nThey stayed.\n", encoding="utf-8")
    packed = tmp_path / "texts.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write("He came. She went.\n\nThey stayed.\n")
    expected = ["He came.", "She went.", "They stayed."]
    assert list(iter_sentences(str(plain))) == expected
    assert list(iter_sentences(plain)) == expected
    assert list(iter_sentences(packed)) == expected


def test_a_dataset_column_is_read():
    dataset = datasets.Dataset.from_dict({"id": [1, 2], "body": ["He came.", "She went. Then home."]})
    assert list(iter_sentences(dataset, text_column="body")) == ["He came.", "She went.", "Then home."]
    with pytest.raises(ValueError, match=r"no column 'text'.*\['id', 'body'\]"):
        list(iter_texts(dataset))


def test_a_dataset_dict_asks_for_one_split():
    both = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})})
    with pytest.raises(TypeError, match=r"source\['train'\]"):
        list(iter_texts(both))


def test_non_string_texts_are_refused_naming_their_position():
    with pytest.raises(TypeError, match="text 1 is a int"):
        list(iter_texts(["fine", 3]))
    with pytest.raises(TypeError, match="list of strings"):
        list(iter_texts(42))


def test_a_missing_path_or_a_sentence_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a Hub dataset id"):
        list(iter_texts("He came home. She went."))
    with pytest.raises(FileNotFoundError):
        list(iter_texts(tmp_path / "missing.txt"))
