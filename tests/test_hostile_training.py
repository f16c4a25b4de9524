"""Careless and hostile use of training, evaluation and the command line: foreign checkpoints, over-long rows,
tokens the model cannot embed, unusable rows, bad command-line input. Each case asserts the clear error."""

import re

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from gradiend_peft.cli import main, parse_command
from gradiend_peft.data import collator_for
from gradiend_peft.evaluation import evaluate_encoder
from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

from training_fixtures import arguments, one_thread, pairs, peft_model, tokenizer  # noqa: F401
from tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

LONG_TEXT = "the man said that " * 30 + "[MASK] would come ."


def _trainer(tmp_path, train, model=None, family="llama", **overrides):
    model = model if model is not None else peft_model(family)
    overrides.setdefault("eval_strategy", "no")
    return GradiendTrainer(model=model, args=arguments(tmp_path, **overrides), train_dataset=train,
                           processing_class=tokenizer(family))


def _with_row(rows, **row):
    base = dict(rows[0])
    base.update(row)
    return datasets.Dataset.from_list([base] + list(rows))


# ----------------------------------------------------------------------- 3. resuming a foreign checkpoint
def test_resuming_from_a_lora_checkpoint_names_the_mismatch(tmp_path):
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    checkpoint = tmp_path / "checkpoint-5"
    lora.save_pretrained(checkpoint)
    trainer = _trainer(tmp_path, pairs("llama")["train"], max_steps=2)
    with pytest.raises(ValueError, match="holds a LORA adapter, not a GRADIEND one"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_resuming_from_a_gradiend_checkpoint_with_other_targets_names_the_mismatch(tmp_path):
    other = peft_model("llama", target_modules=["q_proj"])
    checkpoint = tmp_path / "checkpoint-5"
    other.save_pretrained(checkpoint)
    trainer = _trainer(tmp_path, pairs("llama")["train"], max_steps=2)
    with pytest.raises(ValueError, match="target_shapes differ"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_resuming_from_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    trainer = _trainer(tmp_path, pairs("llama")["train"], max_steps=2)
    with pytest.raises(ValueError, match="not a checkpoint of a GradiendTrainer run"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_resuming_a_finished_run_is_refused_and_leaves_its_adapter(tmp_path):
    data = pairs("llama")["train"]
    finished = _trainer(tmp_path, data, max_steps=2, save_strategy="steps", save_steps=2)
    finished.train()
    trained = {k: v.clone() for k, v in finished.model.state_dict().items() if "gradiend" in k}
    again = _trainer(tmp_path, data, model=finished.model, max_steps=2, save_strategy="steps", save_steps=2)
    # transformers' loop would train a third step before its stop check; the adapter must stay as it was
    with pytest.raises(ValueError, match=r"already reached max_steps \(2 of 2\).*raise max_steps"):
        again.train(resume_from_checkpoint=True)
    assert all(torch.equal(v, trained[k]) for k, v in again.model.state_dict().items() if "gradiend" in k)
    _trainer(tmp_path, data, model=finished.model, max_steps=3).train(resume_from_checkpoint=True)  # trains on


def _adapter_values(model) -> dict:
    return {k: v.detach().clone() for k, v in model.base_model.adapter_state_dict().items()}


def test_resuming_refuses_every_config_change_that_changes_what_the_adapter_computes(tmp_path):
    """A checkpoint of another activation, gradient normalisation, objective or classes is another adapter: resuming
    onto it would continue another training. The field is named and nothing is restored."""
    import json
    import shutil

    data = pairs("bert")["train"]
    _trainer(tmp_path / "run", data, family="bert", max_steps=2, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = json.loads((checkpoint / "adapter_config.json").read_text())
    changes = {"activation": "relu", "normalize_gradients": False, "objective": "causal_lm",
               "feature_classes": ["F", "M"]}
    for field, value in changes.items():
        other = tmp_path / f"other-{field}"
        shutil.copytree(checkpoint, other)
        edited = {**saved, field: value}
        if field == "feature_classes":
            edited["class_signs"] = {"F": 1.0, "M": -1.0}
        (other / "adapter_config.json").write_text(json.dumps(edited))
        trainer = _trainer(tmp_path / "run", data, family="bert", max_steps=4)
        before = _adapter_values(trainer.model)
        with pytest.raises(ValueError, match=rf"Cannot resume from .*its {field} is {re.escape(repr(value))}, this "
                                             r"adapter's is .*same GRADIEND configuration"):
            trainer.train(resume_from_checkpoint=str(other))
        after = _adapter_values(trainer.model)
        assert all(torch.equal(after[k], v) for k, v in before.items()), field
    sharded = tmp_path / "sharded"  # a module-sharded run's checkpoint (an index beside the shard files)
    shutil.copytree(checkpoint, sharded)
    (sharded / "adapter_model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    with pytest.raises(ValueError, match=r"written by a run with adapter_shards > 1, and this trainer runs without"):
        _trainer(tmp_path / "run", data, family="bert", max_steps=4).train(resume_from_checkpoint=str(sharded))
    # class signs are the training's state (sign normalisation negates them): a resumed run takes the checkpoint's
    flipped = tmp_path / "flipped"
    shutil.copytree(checkpoint, flipped)
    (flipped / "adapter_config.json").write_text(json.dumps({**saved, "class_signs": {"M": -1.0, "F": 1.0}}))
    trainer = _trainer(tmp_path / "run", data, family="bert", max_steps=3)
    trainer.train(resume_from_checkpoint=str(flipped))
    assert trainer.model.peft_config["default"].class_signs == {"M": -1.0, "F": 1.0}


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_into_an_output_dir_with_another_runs_checkpoints_is_refused(tmp_path):
    data = pairs("llama")["train"]
    _trainer(tmp_path, data, max_steps=2, save_strategy="steps", save_steps=1).train()
    checkpoints = {name: _files(tmp_path / name) for name in ("checkpoint-1", "checkpoint-2")}
    second = _trainer(tmp_path, data, model=peft_model("llama", init_seed=1), max_steps=1, save_strategy="steps",
                      save_steps=1)
    with pytest.raises(ValueError, match=r"already holds checkpoints of another run \(checkpoint-1, checkpoint-2\).*"
                                         r"resume_from_checkpoint=True.*overwrite_output_dir=True"):
        second.train()
    assert {name: _files(tmp_path / name) for name in checkpoints} == checkpoints  # untouched
    third = _trainer(tmp_path, data, model=peft_model("llama", init_seed=1), max_steps=1, save_strategy="steps",
                     save_steps=1, overwrite_output_dir=True)
    third.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    saved, trained = load_file(tmp_path / "checkpoint-1" / "adapter_model.safetensors"), _adapter_values(third.model)
    assert set(saved) == set(trained) and all(torch.equal(saved[k], v) for k, v in trained.items())  # the new run's


# ----------------------------------------------------------------------------------- 6. over-long rows
def test_an_over_long_training_row_is_refused_naming_it(tmp_path):
    train = _with_row(pairs("llama")["train"], text=LONG_TEXT)  # tiny Llama: 64 positions
    with pytest.raises(ValueError, match=r"train_dataset row 0 is \d+ tokens, more than max_length=64"):
        _trainer(tmp_path, train, max_steps=2)  # before the first step


def test_over_long_training_rows_train_when_truncation_is_asked_for(tmp_path):
    train = _with_row(pairs("llama")["train"], text=LONG_TEXT)
    trainer = _trainer(tmp_path, train, max_steps=3, truncate_long_rows=True)
    trainer.train()
    assert trainer.state.global_step == 3


def test_truncation_keeps_the_slot_and_its_label():
    tok = tokenizer("llama")
    row = {"text": LONG_TEXT, "factual": "he", "alternative": "she", "label": 1.0}
    full = collator_for(tok, "causal_lm")([row])
    cut = collator_for(tok, "causal_lm", max_length=16, truncation=True)([row])
    assert cut["input_ids"].shape[1] == 16
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, -16:])  # the 16 tokens before the slot
    assert cut["factual_labels"][0, -1] == full["factual_labels"][0, -1] != -100


def test_an_over_long_evaluation_row_is_refused_with_the_fix():
    rows = _with_row(pairs("llama")["test"], text=LONG_TEXT)
    with pytest.raises(ValueError, match="positions of the model.*truncate"):
        evaluate_encoder(peft_model("llama"), rows, tokenizer=tokenizer("llama"))


def test_token_ids_beyond_the_vocabulary_are_refused_naming_the_row():
    from gradiend_peft.objective.gradients import batch_gradients

    model = peft_model("llama")
    batch = collator_for(tokenizer("llama"), "causal_lm")(list(pairs("llama")["train"])[:2])
    batch["input_ids"][1, 0] = model.get_base_model().config.vocab_size + 5
    with pytest.raises(ValueError, match="Batch row 1 holds token id .* tokenizer does not belong"):
        batch_gradients(model.base_model, batch, ["diff"])


# ------------------------------------------------------------------------------------ 8. unusable rows
def test_a_target_word_missing_from_the_vocabulary_is_refused_before_training(tmp_path):
    train = _with_row(pairs("bert")["train"], factual="zzyzx")
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        _trainer(tmp_path, train, family="bert", max_steps=2)


def test_rows_whose_factual_equals_the_alternative_are_refused_before_training(tmp_path):
    train = _with_row(pairs("llama")["train"], alternative="He")
    train = _with_row(train, factual="he", alternative="HE")
    with pytest.raises(ValueError, match="row 0: the factual word 'he' equals the alternative"):
        _trainer(tmp_path, train, max_steps=2)


# --------------------------------------------------------------------------------- 10. datasets
def test_an_empty_train_set_is_refused(tmp_path):
    empty = pairs("llama")["train"].select([])
    with pytest.raises(ValueError, match="train_dataset has no rows"):
        _trainer(tmp_path, empty, max_steps=2)


def test_an_iterable_dataset_is_refused_with_the_fix(tmp_path):
    stream = pairs("llama")["train"].to_iterable_dataset()
    with pytest.raises(TypeError, match="IterableDataset.*random access"):
        _trainer(tmp_path, stream, max_steps=2)


def test_training_a_merged_adapter_is_refused(tmp_path):
    model = peft_model("llama")
    model.merge_adapter(feature_factor=1.0, lr=1.0)
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        _trainer(tmp_path, pairs("llama")["train"], model=model, max_steps=2)


# ----------------------------------------------------------------------------------------- 11. minor
@pytest.mark.parametrize("name", ["../../x.json", "/tmp/x.json", "sub/x.json", ".."])
def test_history_file_must_stay_inside_output_dir(tmp_path, name):
    with pytest.raises(ValueError, match="history_file must be a file name inside output_dir"):
        GradiendTrainingArguments(output_dir=str(tmp_path), history_file=name)


# -------------------------------------------------------------------------------------------- 9. CLI
@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("false", None), ("ckpt-3", "ckpt-3")])
def test_resume_from_checkpoint_flag_reads_true_and_false(value, expected):
    args = parse_command("train", ["--output_dir", "out", "--resume_from_checkpoint", value])
    training = next(a for a in args if hasattr(a, "resume_from_checkpoint"))
    assert training.resume_from_checkpoint == expected


def test_a_missing_config_file_is_one_clear_line(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_a_broken_yaml_config_is_one_clear_line(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: [1, 2\nlearning_rate: 1e-5\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "Traceback" not in err


def test_errors_after_parsing_print_one_line_and_debug_shows_the_traceback(capsys, tmp_path):
    missing = str(tmp_path / "no-model-here")
    argv = ["evaluate", "--model", missing, "--classes", "SG:is,PL:are", "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gradiend-peft evaluate:")]
    assert len(lines) == 1 and "--debug" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match=r"No model folder '.*no-model-here'.*does not exist"):
        main(argv + ["--debug"])  # the exception itself, with its traceback


def test_debug_is_documented_in_the_command_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--debug" in capsys.readouterr().out


def test_main_help_mentions_debug(capsys):
    assert main([]) == 0
    assert "--debug" in capsys.readouterr().out
