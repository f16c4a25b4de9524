"""A feature of three classes, one adapter per pair, end to end on a tiny GPT-2: training, the pair index, the
cross-encoding matrix against encode_rows and a hand-written Pearson, the decoder cosines against float64, and the
refusal of tampered folders."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from gradiend_peft import GradiendConfig
from gradiend_peft.data import Feature, collator_for, mine_pairs
from gradiend_peft.data.class_pairs import (
    pair_adapter_names,
    pair_feature,
    pairs_of_classes,
    parse_class_pairs,
)
from gradiend_peft.evaluation.class_pairs import (
    CrossEncodingMatrix,
    DecoderCosineMatrix,
    cross_encoding_matrix,
    decoder_cosine_matrix,
    evaluate_pairs,
)
from gradiend_peft.loading import UntrustedAdapterError
from gradiend_peft.objective import encode_rows
from gradiend_peft.pair_adapters import PAIR_INDEX_NAME, load_pair_adapters, read_pair_index, save_pair_adapters
from gradiend_peft.training import GradiendTrainingArguments, train_pairs

from tiny import tiny_gpt2, word_tokenizer

FEATURE = Feature(classes={"A": ["he"], "B": ["she"], "C": ["it"]}, pair=("A", "B"), name="three")
SUBJECTS = ["the man", "my mother", "the doctor", "the nurse", "the king", "my sister", "the queen", "my father",
            "the boy", "the girl", "my friend", "the child"]
FRAMES = ["said that {} would come", "said that {} went home", "was happy when {} ran home",
          "liked it when {} walked to the store"]
TEXTS = [f"{s} {f.format(w)} ." for s in SUBJECTS for f in FRAMES for w in ("he", "she", "it")]
NEUTRAL = ["the dog ran home when the night was old .", "there was a big red car in the city ."]
TOL32 = 128 * torch.finfo(torch.float32).eps  # float32 encodings batched differently (padding), then a Pearson


def _rows(feature=FEATURE, pairs=None):
    return {pair: mine_pairs(TEXTS, pair_feature(feature, pair), seed=0, min_context_words=2)
            for pair in (pairs or pairs_of_classes(feature))}


def _args(folder, **kwargs):
    return GradiendTrainingArguments(output_dir=str(folder), max_steps=2, rows_per_gradient=4, eval_strategy="steps",
                                     eval_steps=1, save_strategy="no", logging_steps=1, report_to="none", **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rows = _rows()
    training = train_pairs(tiny_gpt2(), FEATURE, rows, _args(tmp_path_factory.mktemp("pairs")),
                           tokenizer=word_tokenizer("gpt2"), config=GradiendConfig(init_seed=0))
    return training, rows


def _adapter_tensors(model, name):
    return {key: value.detach().clone() for key, value in model.state_dict().items() if key.endswith(f".{name}")}


# ------------------------------------------------------------------------------------------------ pairs, names
def test_pairs_of_classes_default_to_every_pair_and_check_given_ones():
    assert pairs_of_classes(FEATURE) == (("A", "B"), ("A", "C"), ("B", "C"))
    assert pairs_of_classes(FEATURE, [("C", "A")]) == (("C", "A"),)
    for bad, message in [([("A", "D")], "not classes"), ([("A", "A")], "twice"), ([("A", "B"), ("B", "A")], "twice"),
                         ([], "No pairs")]:
        with pytest.raises(ValueError, match=message):
            pairs_of_classes(FEATURE, bad)


def test_parse_class_pairs_splits_at_the_one_dash_between_class_names():
    hyphenated = Feature(classes={"Afro-Am": ["a"], "Euro-Am": ["b"], "X": ["c"]}, pair=("X", "Afro-Am"))
    assert parse_class_pairs("Afro-Am-Euro-Am, X-Afro-Am", hyphenated) == (("Afro-Am", "Euro-Am"), ("X", "Afro-Am"))
    with pytest.raises(ValueError, match="no split into two class names"):
        parse_class_pairs("A-D", FEATURE)


def test_adapter_names_are_safe_folder_names_that_say_the_pair():
    names = pair_adapter_names([("A.1", "B/2"), ("A 1", "B 2"), ("a_1", "b_2")])
    assert list(names.values()) == ["A_1-vs-B_2", "A_1-vs-B_2-2", "a_1-vs-b_2-3"]  # unique, also ignoring case
    assert all("." not in n and "/" not in n for n in names.values())


# ------------------------------------------------------------------------------------------------- training
def test_one_adapter_per_pair_with_its_own_classes_and_signs(trained):
    training, _ = trained
    model = training.model
    assert training.adapters == {("A", "B"): "A-vs-B", ("A", "C"): "A-vs-C", ("B", "C"): "B-vs-C"}
    assert sorted(model.peft_config) == ["A-vs-B", "A-vs-C", "B-vs-C"]
    for pair, name in training.adapters.items():
        config = model.peft_config[name]
        assert config.feature_classes == list(pair)
        assert config.class_signs == {pair[0]: 1.0, pair[1]: -1.0} == training.results[pair].class_signs
        summary = training.results[pair].training_summary
        assert summary["global_step"] == 2 and set(summary["class_means"]) == set(pair)  # trained on its own rows
    inits = {model.peft_config[name].init_seed for name in model.peft_config}
    assert inits == {0, 1, 2}  # the pairs do not start from one random adapter


def test_training_a_pair_leaves_the_earlier_pairs_adapters_as_they_were(tmp_path, trained):
    training, rows = trained
    alone = train_pairs(tiny_gpt2(), FEATURE, {("A", "B"): rows[("A", "B")]}, _args(tmp_path),
                        tokenizer=word_tokenizer("gpt2"), config=GradiendConfig(init_seed=0))
    ours, theirs = _adapter_tensors(training.model, "A-vs-B"), _adapter_tensors(alone.model, "A-vs-B")
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)  # training A-C and B-C afterwards changed nothing


def test_restarts_run_train_with_restarts_for_each_pair(tmp_path, trained):
    _, rows = trained
    training = train_pairs(tiny_gpt2(), FEATURE, {("B", "C"): rows[("B", "C")]}, _args(tmp_path),
                           tokenizer=word_tokenizer("gpt2"), config=GradiendConfig(init_seed=0), restarts=2)
    attempts = training.results[("B", "C")].training_summary["attempts"]
    report = json.loads((tmp_path / "B-vs-C" / "gradiend_seed_report.json").read_text())
    assert report == attempts and 1 <= len(attempts["attempts"]) <= 2


def test_train_pairs_refuses_what_it_cannot_train(tmp_path, trained):
    training, rows = trained
    tok = word_tokenizer("gpt2")
    with pytest.raises(ValueError, match="already holds adapters named"):
        train_pairs(training.model, FEATURE, {("A", "B"): rows[("A", "B")]}, _args(tmp_path), tokenizer=tok,
                    config=GradiendConfig())
    with pytest.raises(ValueError, match="at least 'train'"):
        train_pairs(tiny_gpt2(), FEATURE, {("A", "B"): rows[("A", "B")]["train"]}, _args(tmp_path), tokenizer=tok,
                    config=GradiendConfig())
    with pytest.raises(ValueError, match="not the classes of the rows"):  # the trainer's own check of each pair
        train_pairs(tiny_gpt2(), FEATURE, {("A", "C"): rows[("A", "B")]}, _args(tmp_path), tokenizer=tok,
                    config=GradiendConfig())


# ---------------------------------------------------------------------------------------------- the index
def test_pair_index_round_trips_and_loads_every_adapter_onto_one_base(tmp_path, trained):
    training, _ = trained
    summaries = {pair: result.training_summary for pair, result in training.results.items()}
    folder = save_pair_adapters(training.model, str(tmp_path / "adapter"), FEATURE, training.adapters, summaries)
    raw = json.loads((tmp_path / "adapter" / PAIR_INDEX_NAME).read_text())
    assert raw["feature"] == {"name": "three", "classes": {"A": ["he"], "B": ["she"], "C": ["it"]}}
    assert [(e["classes"], e["adapter"], e["folder"], e["class_signs"]) for e in raw["pairs"]] == [
        (["A", "B"], "A-vs-B", "A-vs-B", {"A": 1.0, "B": -1.0}),
        (["A", "C"], "A-vs-C", "A-vs-C", {"A": 1.0, "C": -1.0}),
        (["B", "C"], "B-vs-C", "B-vs-C", {"B": 1.0, "C": -1.0})]
    assert read_pair_index(folder).to_dict() == raw
    for name in training.adapters.values():
        saved = json.loads((tmp_path / "adapter" / name / "gradiend_training_summary.json").read_text())
        assert saved["global_step"] == 2
    assert not (tmp_path / "adapter" / "README.md").exists()  # each pair's folder has its own card, not the root

    model, index = load_pair_adapters(tiny_gpt2(), folder)
    assert index.adapters == training.adapters and index.feature().classes == FEATURE.classes
    for name in training.adapters.values():
        ours, loaded = _adapter_tensors(training.model, name), _adapter_tensors(model, name)
        assert ours.keys() == loaded.keys() and all(torch.equal(ours[k], loaded[k]) for k in ours)
        assert model.peft_config[name].class_signs == training.model.peft_config[name].class_signs
    model, index = load_pair_adapters(tiny_gpt2(), folder, pairs=[("B", "C")])
    assert list(model.peft_config) == ["B-vs-C"] and index.adapters == {("B", "C"): "B-vs-C"}
    with pytest.raises(ValueError, match=r"\['C-B'\] asked for"):  # pairs as the index writes them
        load_pair_adapters(tiny_gpt2(), folder, pairs=[("C", "B")])


@pytest.fixture
def saved(tmp_path, trained):
    training, _ = trained
    return save_pair_adapters(training.model, str(tmp_path / "adapter"), FEATURE, training.adapters)


def _edit_index(folder, change):
    path = os.path.join(folder, PAIR_INDEX_NAME)
    with open(path) as handle:
        raw = json.load(handle)
    change(raw)
    with open(path, "w") as handle:
        json.dump(raw, handle)


@pytest.mark.parametrize("folder_name", ["..", "../A-vs-B", "/tmp", "A-vs-B/../A-vs-C", "A-vs-B.bak", ""])
def test_a_folder_name_that_is_not_a_plain_name_is_refused(saved, folder_name):
    _edit_index(saved, lambda raw: raw["pairs"][0].update(folder=folder_name))
    with pytest.raises(UntrustedAdapterError, match="not a plain name"):
        load_pair_adapters(tiny_gpt2(), saved)


def test_a_folder_that_is_a_symbolic_link_is_refused_even_to_a_real_adapter(saved, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(saved, "A-vs-B"), outside)
    shutil.rmtree(os.path.join(saved, "A-vs-B"))
    os.symlink(outside, os.path.join(saved, "A-vs-B"))
    with pytest.raises(UntrustedAdapterError, match="symbolic link"):
        load_pair_adapters(tiny_gpt2(), saved)


@pytest.mark.parametrize("file", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_linked_adapter_file_or_index_is_refused(saved, tmp_path, file):
    path = os.path.join(saved, "A-vs-C", file)
    shutil.move(path, tmp_path / file)
    os.symlink(tmp_path / file, path)
    with pytest.raises(UntrustedAdapterError, match="not a regular file"):
        load_pair_adapters(tiny_gpt2(), saved)
    index = os.path.join(saved, PAIR_INDEX_NAME)
    shutil.move(index, tmp_path / "index.json")
    os.symlink(tmp_path / "index.json", index)
    with pytest.raises(UntrustedAdapterError, match="not a regular file"):
        read_pair_index(saved)


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw["pairs"][0].update(class_signs={"A": 1.0, "B": 1.0}), "class_signs"),
    (lambda raw: raw["pairs"][0].update(classes=["A", "D"]), "two different classes"),
    (lambda raw: raw["pairs"][1].update(folder="A-vs-B"), "folder twice"),
    (lambda raw: raw.update(version=2), "version"),
    (lambda raw: raw.update(extra=1), "exactly the keys"),
    (lambda raw: raw["pairs"][0].update(adapter="a.b"), "not a plain name"),
    (lambda raw: raw["pairs"].append(dict(raw["pairs"][0], classes=["B", "A"], adapter="x", folder="A-vs-C")),
     "at most one entry per pair"),
    (lambda raw: raw["pairs"][1].update(classes=["B", "A"], class_signs={"A": 1.0, "B": -1.0}), "given twice"),
])
def test_a_malformed_index_is_refused(saved, change, message):
    _edit_index(saved, change)
    with pytest.raises(UntrustedAdapterError, match=message):
        load_pair_adapters(tiny_gpt2(), saved)


def test_an_index_whose_folders_are_swapped_is_refused(saved):
    def swap(raw):
        raw["pairs"][0]["folder"], raw["pairs"][1]["folder"] = raw["pairs"][1]["folder"], raw["pairs"][0]["folder"]
    _edit_index(saved, swap)
    with pytest.raises(UntrustedAdapterError, match="mixed-up folder"):
        load_pair_adapters(tiny_gpt2(), saved)


def test_an_index_with_a_key_twice_is_refused(saved):
    path = os.path.join(saved, PAIR_INDEX_NAME)
    text = open(path).read()
    with open(path, "w") as handle:
        handle.write(text.replace('"version": 1', '"version": 1, "version": 1', 1))
    with pytest.raises(UntrustedAdapterError, match="twice"):
        read_pair_index(saved)


def test_saving_refuses_a_folder_that_holds_a_single_adapter(tmp_path, trained):
    training, _ = trained
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a single adapter"):
        save_pair_adapters(training.model, str(tmp_path), FEATURE, training.adapters)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json"]  # nothing written


# ------------------------------------------------------------------------------------------------ matrices
def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def _encode_one_by_one(model, name, rows):
    """Each row alone through encode_rows (no batching, no reuse)."""
    collate = collator_for(word_tokenizer("gpt2"), model.peft_config[name].objective)
    return [float(encode_rows(model.base_model, collate([row]), name)[0, 0]) for row in rows]


def test_cross_encoding_matrix_against_encode_rows_and_a_hand_written_pearson(trained):
    training, rows = trained
    model = training.model
    tests = {pair: list(rows[pair]["test"]) for pair in rows}
    matrix = cross_encoding_matrix(model, tests, tokenizer=word_tokenizer("gpt2"))
    pairs = list(tests)
    for i, encoder in enumerate(pairs):
        name = training.adapters[encoder]
        assert model.peft_config[name].source == "alternative"
        for j, pair in enumerate(pairs):
            h = _encode_one_by_one(model, name, tests[pair])
            # the signs pair j's own encoder should give: an alternative source reads the *other* class's token,
            # so a row of pair j's first class (label +1) should encode to -1
            t = [-row["label"] for row in tests[pair]]
            assert matrix.correlation[i][j] == pytest.approx(_pearson(h, t), abs=TOL32)
            right = sum((a > 0) == (b > 0) for a, b in zip(h, t)) / len(h)
            assert matrix.accuracy[i][j] == pytest.approx(right)
            for cls in pair:
                own = [v for v, row in zip(h, tests[pair]) if row["factual_class"] == cls]
                assert matrix.class_means[i][j][cls] == pytest.approx(sum(own) / len(own), abs=TOL32)
    assert matrix.n_rows == tuple(len(tests[p]) for p in pairs)
    assert CrossEncodingMatrix.from_dict(json.loads(json.dumps(matrix.to_dict()))) == matrix
    assert "A-C" in matrix.summary() and "encoder\\rows" in matrix.summary()


def test_evaluate_pairs_reuses_each_reports_encodings_and_encodes_no_row_twice(trained, monkeypatch):
    import gradiend_peft.evaluation.encoder as encoder_module

    training, rows = trained
    model = training.model
    tests = {pair: rows[pair]["test"] for pair in rows}
    encoded: dict[str, int] = {}
    real = encoder_module.encode_rows

    def counting(tuner, batch, name, *args, **kwargs):
        encoded[name] = encoded.get(name, 0) + batch["input_ids"].shape[0]
        return real(tuner, batch, name, *args, **kwargs)

    monkeypatch.setattr(encoder_module, "encode_rows", counting)
    evaluation = evaluate_pairs(model, tests, tokenizer=word_tokenizer("gpt2"), neutral=NEUTRAL)
    total = sum(len(t) for t in tests.values())
    assert encoded == {name: total + len(NEUTRAL) for name in training.adapters.values()}
    for i, pair in enumerate(tests):
        report = evaluation.reports[pair]
        assert evaluation.cross.diagonal[i] == report.correlation  # the same encodings, the same targets
        own = _encode_one_by_one(model, training.adapters[pair], list(tests[pair]))
        assert report.correlation == pytest.approx(_pearson(own, [-r["label"] for r in tests[pair]]), abs=TOL32)
    table = evaluation.table()
    assert [row["pair"] for row in table] == ["A-B", "A-C", "B-C"]
    assert table[1]["r"] == evaluation.reports[("A", "C")].correlation
    assert table[1]["mean (2nd class rows)"] == evaluation.reports[("A", "C")].classes["C"].mean


def test_decoder_cosines_against_a_float64_computation(trained):
    training, _ = trained
    model = training.model
    matrix = decoder_cosine_matrix(model)
    assert matrix.components == ("bias", "weight_0")
    names = list(training.adapters.values())
    tuner = model.base_model

    def flat(name, component):
        parts = []
        for layer in tuner.gradiend_layers(name).values():
            tensor = layer.gradiend_decoder_bias[name] if component == "bias" else layer.gradiend_decoder[name][0]
            parts.append(tensor.detach().double().reshape(-1))
        return torch.cat(parts) / float(tuner.gradiend_gradient_scale[name])

    for component in matrix.components:
        vectors = [flat(name, component) for name in names]
        for i, a in enumerate(vectors):
            assert matrix.norms[component][i] == pytest.approx(float(a.norm()), rel=1e-12)
            for k, b in enumerate(vectors):
                expected = float(a @ b) / float(a.norm() * b.norm())
                assert matrix.cosines[component][i][k] == pytest.approx(expected, abs=1e-12)
    assert DecoderCosineMatrix.from_dict(json.loads(json.dumps(matrix.to_dict()))) == matrix


def test_matrix_plots_are_written(tmp_path, trained):
    from gradiend_peft.plotting import plot_cross_encoding, plot_decoder_cosines

    training, rows = trained
    matrix = cross_encoding_matrix(training.model, {p: rows[p]["test"] for p in rows}, tokenizer=word_tokenizer("gpt2"))
    for plot, data, name in ((plot_cross_encoding, matrix, "cross.png"),
                             (plot_decoder_cosines, decoder_cosine_matrix(training.model), "cosines.png")):
        path = plot(data.to_dict(), str(tmp_path / name))
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no pairs"):
        plot_cross_encoding({"pairs": []}, str(tmp_path / "empty.png"))
