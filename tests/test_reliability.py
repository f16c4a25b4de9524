"""Reliability: property-based data mining, NaN gradients, and determinism for a fixed seed."""

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.objective import encode_rows, reconstruction_loss
from gradiend_peft.data import mine_neutral, mine_pairs
from gradiend_peft.objective import NonFiniteGradientError, batch_gradients
from gradiend_peft.data import MASK_PLACEHOLDER, SPLITS

from batches import batch_for
from tiny import MODEL_BUILDERS

WORDS = st.text(alphabet="abcdefgh", min_size=2, max_size=5)
FILLER = ["the", "cat", "ran", "home", "and", "then", "slept", "a", "big", "dog", "there", "sheep", "ahead"]


@st.composite
def feature_and_texts(draw):
    words = draw(st.lists(WORDS, min_size=2, max_size=4, unique=True))
    cut = draw(st.integers(1, len(words) - 1))
    classes = {"A": words[:cut], "B": words[cut:]}
    vocabulary = FILLER + words + [w.upper() for w in words] + [w.capitalize() for w in words]
    sentences = draw(st.lists(st.lists(st.sampled_from(vocabulary), min_size=1, max_size=9), min_size=1, max_size=12))
    texts = [" ".join(tokens) + draw(st.sampled_from([".", "!", "?", ","])) for tokens in sentences]
    return classes, texts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_and_texts(), st.integers(0, 3))
def test_mined_rows_have_one_slot_filled_by_the_factual_word(data, seed):
    classes, texts = data
    lookup = {w: c for c, words in classes.items() for w in words}
    try:
        result = mine_pairs(texts, classes, seed=seed, balance=False, split_ratios=(1, 0, 0), deduplicate=False)
    except ValueError as err:  # a class without rows is refused, naming it
        assert "no rows" in str(err).lower() or "class" in str(err).lower()
        return
    for split in SPLITS:
        for row in result[split]:
            assert row["text"].count(MASK_PLACEHOLDER) == 1
            assert lookup[row["factual"].lower()] == row["factual_class"]
            assert lookup[row["alternative"].lower()] == row["alternative_class"] != row["factual_class"]
            assert row["label"] == (1.0 if row["factual_class"] == "A" else -1.0)
            original = row["text"].replace(MASK_PLACEHOLDER, row["factual"])
            assert any(original in t for t in texts)  # the factual word is what stood in the slot


@settings(max_examples=40, deadline=None)
@given(feature_and_texts())
def test_neutral_texts_contain_no_feature_word(data):
    classes, texts = data
    words = {w for ws in classes.values() for w in ws}
    try:
        neutral = mine_neutral(texts, classes)
    except ValueError:
        return
    for row in neutral:
        tokens = set(re.findall(r"[A-Za-z]+", row["text"].lower()))
        assert not tokens & words


def test_nan_weights_stop_the_gradient_pass_naming_the_module():
    model = get_peft_model(MODEL_BUILDERS["llama"](), GradiendConfig(init_seed=0))
    layer = model.base_model.gradiend_layers()["model.layers.1.mlp.down_proj"]
    with torch.no_grad():
        layer.get_base_layer().weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"module 'model\.layers\.\d\.") as err:
        batch_gradients(model.base_model, batch_for("llama"), ["factual"])
    assert "NaN or infinite" in str(err.value)
    with pytest.raises(NonFiniteGradientError):
        encode_rows(model.base_model, batch_for("llama"))


def test_same_seed_same_rows():
    texts = ["He said that she would come.", "She knew he was there.", "Then he left and she stayed."] * 5
    first = mine_pairs(texts, {"M": ["he"], "F": ["she"]}, seed=7, deduplicate=False)
    second = mine_pairs(texts, {"M": ["he"], "F": ["she"]}, seed=7, deduplicate=False)
    for split in SPLITS:
        assert first[split].to_list() == second[split].to_list()


def test_same_seed_same_adapter_and_encodings():
    def build():
        model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=5))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(3):
            loss, _, _ = reconstruction_loss(model.base_model, batch_for("bert"))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model

    first, second = build(), build()
    for key, value in first.state_dict().items():
        if "gradiend" in key:
            assert torch.equal(value, second.state_dict()[key]), key
    assert torch.equal(encode_rows(first.base_model, batch_for("bert")), encode_rows(second.base_model, batch_for("bert")))


def test_training_stops_at_a_nan_gradient_naming_step_module_and_checkpoint(tmp_path):
    from gradiend_peft.data import collator_for
    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    from tiny import word_tokenizer

    tok = word_tokenizer("bert")
    rows = [{"text": f"the {noun} said that [MASK] would come .", "factual": w, "alternative": a,
             "factual_class": c, "alternative_class": o, "label": 1.0 if c == "M" else -1.0}
            for noun in ("man", "king", "boy", "father") for w, a, c, o in (("he", "she", "M", "F"), ("she", "he", "F", "M"))]
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    model = get_peft_model(MODEL_BUILDERS["bert"](), GradiendConfig(init_seed=0, feature_classes=["M", "F"]))
    args = GradiendTrainingArguments(output_dir=str(tmp_path), rows_per_gradient=2, max_steps=6, save_steps=2,
                                     eval_strategy="no", report_to="none", logging_steps=1, use_cpu=True)

    class PoisonAfterCheckpoint(__import__("transformers").TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            layer = model.base_model.gradiend_layers()["bert.encoder.layer.1.output.dense"]
            with torch.no_grad():
                layer.get_base_layer().weight[0, 0] = float("inf")

    trainer = GradiendTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator_for(tok, "masked_lm"),
                              processing_class=tok, callbacks=[PoisonAfterCheckpoint()])
    with pytest.raises(NonFiniteGradientError) as err:
        trainer.train()
    message = str(err.value)
    assert "Training stopped at step 2" in message and "bert.encoder.layer" in message
    assert "checkpoint-2" in message and (tmp_path / "checkpoint-2" / "adapter_model.safetensors").is_file()
