"""evaluate_encoder against a plain per-row autograd oracle and hand-computed statistics."""

import json
import math
import os
import statistics

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.data import collator_for
from gradiend_peft.evaluation import EncoderReport, evaluate_encoder, neutral_slot_rows
from gradiend_peft.objective import expected_sign

from batches import ROWS
from test_evaluation_scoring import one_thread  # noqa: F401  (autouse fixture)
from tiny import CORPUS, MODEL_BUILDERS, TOKENIZER_KIND, word_tokenizer

MINED = [
    {"text": f"{pre} [MASK] {post}", "factual": f, "alternative": a, "factual_class": "F" if f == "she" else "M",
     "alternative_class": "F" if a == "she" else "M", "label": label}
    for pre, post, f, a, label in ROWS
]
NEUTRAL = ["the dog ran home when it was night .", "there was a big red car in the city .",
           "the children walk to the old house ."]


def _model(family, **kwargs):
    config = GradiendConfig(init_seed=1, feature_classes=["F", "M"], **kwargs)
    return get_peft_model(MODEL_BUILDERS[family](), config)


def _oracle_dots(model, rows, tokenizer, kind):
    """sum_m <E_m, g_m,i> per row, one row at a time with plain autograd."""
    tuner = model.base_model
    layers = tuner.gradiend_layers("default")
    collate = collator_for(tokenizer, tuner.peft_config["default"].objective)
    dots = []
    for row in rows:
        batch = collate([row])
        weights = [layer.get_base_layer().weight for layer in layers.values()]
        for w in weights:
            w.requires_grad_(True)
        logits = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch[f"{kind}_labels"]
        loss = F.cross_entropy(logits[labels != -100], labels[labels != -100])
        grads = torch.autograd.grad(loss, weights)
        for w in weights:
            w.requires_grad_(False)
        dots.append(sum(float((layer.gradiend_encoder["default"][0].detach() * g).sum()) for layer, g in zip(layers.values(), grads)))
    return dots


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_encodings_and_statistics_match_a_per_row_oracle(family):
    tok = word_tokenizer(TOKENIZER_KIND[family])
    model = _model(family)
    tuner = model.base_model
    dots = _oracle_dots(model, MINED, tok, "alternative")
    scale = 1.0 / max(abs(d) for d in dots)  # spread the encodings over tanh's range
    tuner.gradiend_gradient_scale["default"].fill_(scale)
    bias = tuner.gradiend_encoder_bias["default"].item()
    expected_h = [math.tanh(scale * d + bias) for d in dots]

    report = evaluate_encoder(model, MINED, tokenizer=tok, batch_size=3, progress=False)

    got = [r["encoding"] for r in report.rows]
    assert got == pytest.approx(expected_h, abs=1e-5)
    signs = [-r["label"] for r in MINED]  # source "alternative": the label negated (class_signs F=+1, M=-1)
    assert [r["expected"] for r in report.rows] == signs
    mh, ms = statistics.fmean(got), statistics.fmean(signs)
    r = sum((a - mh) * (b - ms) for a, b in zip(got, signs)) / math.sqrt(
        sum((a - mh) ** 2 for a in got) * sum((b - ms) ** 2 for b in signs))
    assert report.correlation == pytest.approx(r, abs=1e-9)
    assert report.accuracy == sum((h > 0) == (t > 0) for h, t in zip(got, signs)) / len(got)
    for cls in ("F", "M"):
        values = [h for h, row in zip(got, MINED) if row["factual_class"] == cls]
        stats = report.classes[cls]
        assert stats.count == 4 and stats.mean == pytest.approx(statistics.fmean(values))
        assert stats.std == pytest.approx(statistics.pstdev(values), abs=1e-12)
        q25, median, q75 = statistics.quantiles(values, n=4, method="inclusive")
        assert (stats.q25, stats.median, stats.q75) == pytest.approx((q25, median, q75))
        assert (stats.min, stats.max) == (min(values), max(values))
        assert stats.expected_sign == (1.0 if cls == "M" else -1.0)
    assert set(report.words) == {"he", "she"}
    assert report.words["she"].mean == pytest.approx(report.classes["F"].mean)


def test_expected_sign_follows_the_source_gradients_class():
    row = {"factual_class": "F", "alternative_class": "M", "label": 1.0}
    signs = {"F": 1.0, "M": -1.0}
    assert expected_sign(row, "factual", signs) == 1.0
    assert expected_sign(row, "diff", signs) == 1.0
    assert expected_sign(row, "alternative", signs) == -1.0  # the encoder reads the gradient toward "M"
    assert expected_sign(row, "alternative", {"F": -1.0, "M": 1.0}) == 1.0
    assert expected_sign({"label": -1.0}, "alternative", None) == 1.0
    assert expected_sign({"label": 0.0}, "factual", None) == 0.0  # a neutral row
    with pytest.raises(ValueError, match="neither a class of the adapter"):
        expected_sign({"text": "x"}, "factual", None)


def test_neutral_rows_slot_one_word_and_encode_like_the_oracle():
    tok = word_tokenizer("gpt2")
    model = _model("gpt2")
    report = evaluate_encoder(model, MINED[:4], tokenizer=tok, neutral=NEUTRAL, progress=False)
    neutral = neutral_slot_rows(NEUTRAL, tok, "causal_lm", seed=0)
    assert neutral == neutral_slot_rows(NEUTRAL, tok, "causal_lm", seed=0)  # fixed by the seed
    for row, text in zip(neutral, NEUTRAL):
        prefix, suffix = row["text"].split("[MASK]")
        assert prefix + row["factual"] + suffix == text and prefix.strip()  # a word after the first
        assert row["alternative"] == row["factual"] and row["label"] == 0.0
    assert [r["text"] for r in report.neutral_rows] == [r["text"] for r in neutral]
    bias = model.base_model.gradiend_encoder_bias["default"].item()
    expected = [math.tanh(d + bias) for d in _oracle_dots(model, neutral, tok, "alternative")]
    assert [r["encoding"] for r in report.neutral_rows] == pytest.approx(expected, abs=1e-6)
    assert report.neutral.count == 3 and report.neutral.mean == pytest.approx(statistics.fmean(expected), abs=1e-6)
    assert report.neutral_mean_abs == pytest.approx(statistics.fmean(abs(x) for x in expected), abs=1e-6)


def test_with_a_diff_source_neutral_rows_encode_to_the_bias_alone():
    tok = word_tokenizer("bert")
    model = _model("bert", source="diff")
    report = evaluate_encoder(model, MINED[:2], tokenizer=tok, neutral=CORPUS[:6], progress=False)
    bias = math.tanh(model.base_model.gradiend_encoder_bias["default"].item())
    assert all(r["encoding"] == pytest.approx(bias, abs=1e-7) for r in report.neutral_rows)
    assert report.neutral.std == pytest.approx(0.0, abs=1e-7)


def test_report_round_trips_through_json_and_a_table(tmp_path):
    tok = word_tokenizer("bert")
    report = evaluate_encoder(_model("bert"), MINED, tokenizer=tok, neutral=NEUTRAL, progress=False)
    path = report.save_json(str(tmp_path / "out" / "encoder.json"))
    assert os.listdir(tmp_path / "out") == ["encoder.json"]  # no temporary file left behind
    data = json.load(open(path))
    assert EncoderReport.from_dict(data) == report
    table = report.to_table()
    assert len(table) == len(MINED) + len(NEUTRAL)
    assert table["encoding"][: len(MINED)] == pytest.approx([r["encoding"] for r in report.rows])
    assert "class F" in report.summary() and "neutral" in report.summary()


def test_bad_inputs_are_refused_clearly():
    tok = word_tokenizer("bert")
    model = _model("bert")
    with pytest.raises(ValueError, match="empty"):
        evaluate_encoder(model, [], tokenizer=tok)
    with pytest.raises(ValueError, match="MASK"):
        evaluate_encoder(model, [{"text": "no slot", "factual": "he", "label": 1.0}], tokenizer=tok)
    with pytest.raises(TypeError, match="GRADIEND"):
        evaluate_encoder(MODEL_BUILDERS["bert"](), MINED, tokenizer=tok)
    import datasets

    splits = datasets.DatasetDict({"test": datasets.Dataset.from_list(MINED)})
    with pytest.raises(TypeError, match="one split"):
        evaluate_encoder(model, splits, tokenizer=tok)
    assert evaluate_encoder(model, splits["test"], tokenizer=tok, progress=False).n_rows == len(MINED)
