"""mine_pairs on text that sentence splitting does not cut: each row keeps a window of ``context_chars`` characters
on each side of its slot, so memory stays linear in the input (a 1.9 MB line without sentence ends once took 22 GB:
every row held the whole line), and the rows of ordinary text are the whole sentences they always were."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gradiend_peft.data import MASK_PLACEHOLDER, SPLITS, load_corpus, mine_pairs
from gradiend_peft.data.mining import DEFAULT_CONTEXT_CHARS

GENDER = {"M": ["he"], "F": ["she"]}


def _texts(result):
    return [row["text"] for split in SPLITS for row in result[split]]


def test_a_window_counts_characters_and_never_splits_a_word():
    line = "one two three four five six she seven eight nine ten eleven"
    result = mine_pairs([line, "he came"], GENDER, balance=False, split_ratios=(1, 0, 0), context_chars=10)
    (row,) = [r for r in result["train"] if r["factual"] == "she"]
    # the 10 characters before the slot, " five six ", start right after "four": the row starts at the next word;
    # the 10 after it, " seven eig", end inside "eight": that word goes
    assert row["text"] == "five six [MASK] seven"
    whole = mine_pairs([line, "he came"], GENDER, balance=False, split_ratios=(1, 0, 0), context_chars=None)
    assert [r["text"] for r in whole["train"] if r["factual"] == "she"] == [line.replace("she", MASK_PLACEHOLDER)]


def test_a_window_without_a_space_is_cut_at_its_length():
    line = "a " + "x" * 30 + ",she," + "y" * 30
    result = mine_pairs([line, "he came"], GENDER, balance=False, split_ratios=(1, 0, 0), context_chars=8)
    (row,) = [r for r in result["train"] if r["factual"] == "she"]
    assert row["text"] == "x" * 7 + ",[MASK]," + "y" * 7


def test_the_embedded_corpora_give_the_same_rows_with_and_without_the_window():
    for corpus, feature in (("english", {"M": ["he", "him", "his"], "F": ["she", "her", "hers"]}),
                            ("german", {"M": ["er"], "F": ["sie"]})):
        texts = load_corpus(corpus)
        assert max(len(t) for t in texts) < DEFAULT_CONTEXT_CHARS  # so no row is cut
        windowed = mine_pairs(texts, feature, seed=3, min_context_words=5)
        whole = mine_pairs(texts, feature, seed=3, min_context_words=5, context_chars=None)
        for split in SPLITS:
            assert windowed[split].to_dict() == whole[split].to_dict(), (corpus, split)


_PROBE = textwrap.dedent("""
    import json, os, resource, sys, tracemalloc
    from gradiend_peft.data import mine_pairs
    path = sys.argv[1]
    size = os.path.getsize(path)
    # a safety net only (the assertion is on the traced peak): quadratic mining must fail here, not swap the machine
    with open("/proc/self/status") as status:
        vm = int(next(l for l in status if l.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
    tracemalloc.start()
    try:
        rows = mine_pairs(path, {"M": ["he"], "F": ["she"]}, max_rows_per_class=100, min_context_words=5)
        result = {"rows": sum(len(rows[s]) for s in rows), "longest": max(len(t) for s in rows for t in rows[s]["text"])}
    except MemoryError:
        result = {"error": "MemoryError"}
    result.update(size=size, peak=tracemalloc.get_traced_memory()[1])
    print(json.dumps(result))
""")


def test_mining_a_long_line_takes_memory_linear_in_its_length(tmp_path):
    unit = "the nurse said that she would come and the doctor said that he went home with a dog then "
    path = tmp_path / "one_line.txt"
    path.write_text(unit * (4_000_000 // len(unit)) + "\n")  # 4 MB, no sentence end: one sentence of 86,000 slots
    run = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    size = result["size"]
    assert "error" not in result, result
    # the line, its split into words (what sentence splitting costs, ~14 bytes per input byte) and one small
    # record per occurrence; whole-line rows would need 86,000 x 4 MB
    assert result["peak"] < 20 * size + (64 << 20), result
    assert result["rows"] == 200 and result["longest"] <= 2 * DEFAULT_CONTEXT_CHARS + len(MASK_PLACEHOLDER)
