"""The steps the CLI stands on: class parsing, control rows, tables."""

import pytest

from gradiend_peft.data import Feature
from gradiend_peft.bias.debias import control_rows
from gradiend_peft.cli.steps import format_table, parse_classes, parse_layers


def test_parse_classes_reads_names_and_words():
    feature = parse_classes("3SG:he|she|it,3PL:they")
    assert feature.classes == {"3SG": ("he", "she", "it"), "3PL": ("they",)}
    assert feature.pair == ("3SG", "3PL")


@pytest.mark.parametrize("spec", ["he,she", "M:he", ""])
def test_parse_classes_refuses_malformed_specs(spec):
    with pytest.raises(ValueError, match="class"):
        parse_classes(spec)


def test_parse_layers_reads_ranges_and_lists():
    assert parse_layers("20-22,25") == [20, 21, 22, 25] and parse_layers(None) is None
    with pytest.raises(ValueError, match="backwards"):
        parse_layers("5-3")


def test_control_rows_come_from_the_context_controls_for_he_and_she():
    feature = Feature({"F": ["she"], "M": ["he"]})
    rows = control_rows(feature, count=40, seed=3)
    assert len(rows) == 40 and rows == control_rows(feature, count=40, seed=3)
    for row in rows:
        assert row["text"].count("[MASK]") == 1
        assert {row["factual"].lower(), row["alternative"].lower()} == {"he", "she"}
        assert row["factual_class"] == ("F" if row["factual"].lower() == "she" else "M")
    assert sum(row["factual"].lower() == "she" for row in rows) == 20


def test_control_rows_need_he_and_she_in_different_classes():
    assert control_rows(Feature({"3SG": ["he", "she", "it"], "3PL": ["they"]}), 40) == []
    assert control_rows(Feature({"DER": ["der"], "DIE": ["die"]}), 40) == []


def test_format_table_shows_every_column_and_blanks_missing_cells():
    text = format_table([{"model": "base", "LMS": 0.16554}, {"model": "balance", "LMS": 0.1661, "lr": 30.0},
                         {"model": "x", "LMS": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["model", "LMS", "lr"]
    assert lines[-3].split() == ["base", "0.1655", "-"] and lines[-2].split() == ["balance", "0.1661", "30.0000"]
    assert lines[-1].split() == ["x", "-", "-"]
