"""The gradiend-peft command line, end to end on a tiny GPT-2 saved to a temporary folder."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gradiend_peft.cli import main, parse_command

from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from tiny import word_tokenizer


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)  # the same tiny model whatever ran before (the rewrite test needs an edit that acts)
    tok = word_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "rewrite", "demo"):
        assert command in out


def test_unknown_command_is_an_error(capsys):
    assert main(["fly"]) == 2
    assert "Unknown command 'fly'" in capsys.readouterr().err


def test_command_help_documents_options():
    result = subprocess.run([sys.executable, "-m", "gradiend_peft.cli", "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--model", "--classes", "--policies", "--rows_per_gradient", "--config", "--fast"):
        assert option in result.stdout


def test_config_file_with_unknown_keys_is_refused(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: x\nclases: 'M:he,F:she'\n")
    assert main(["evaluate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Unknown keys" in err and "clases" in err and "--help" in err


def test_demo_settings_adapt_to_another_model_unless_given():
    from gradiend_peft.cli.demo import adapt_to_model

    two_blocks = GPT2Config(n_layer=2)
    _, model_args, _, rewrite_args, _, _ = parse_command("demo", ["--model", "folder"])
    model_args, rewrite_args = adapt_to_model(model_args, rewrite_args, two_blocks)
    assert model_args.layers is None and rewrite_args.lrs is None  # every block; the search's default grid
    _, model_args, _, rewrite_args, _, _ = parse_command("demo", ["--model", "folder", "--layers", "0-1", "--lrs", "0.1", "1"])
    model_args, rewrite_args = adapt_to_model(model_args, rewrite_args, two_blocks)
    assert model_args.layers == "0-1" and rewrite_args.lrs == [0.1, 1.0]  # what the user gave stays
    _, model_args, _, rewrite_args, _, _ = parse_command("demo", [])
    assert adapt_to_model(model_args, rewrite_args, GPT2Config(n_layer=30)) == (model_args, rewrite_args)


def test_config_file_sets_values_and_flags_win(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": "from-file", "classes": "A:he,B:she", "lms_floor": 0.5}))
    run, model_args, data_args, output, rewrite_args = parse_command("rewrite", ["--config", str(config), "--lms_floor", "0.9"])
    assert model_args.model == "from-file" and data_args.classes == "A:he,B:she"
    assert rewrite_args.lms_floor == 0.9


def test_demo_fast_mode_runs_end_to_end(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    # the tiny tokenizer has none of the attribute words: no attribute adapter here (the slow README test runs it)
    code = main(["demo", "--model", tiny_model_dir, "--fast", "--output_dir", str(out), "--classes", "M:he,F:she",
                 "--min_context_words", "0", "--threads", "1", "--report_to", "none", "--attribute_steps", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pronoun edit chosen by the debias policy on the search split" in printed and "validation r = " in printed
    assert "definitional adapter: " in printed and "attribute adapter: " not in printed
    assert "default edit: definitional directions projected out" in printed
    assert "stereotype_pref" in printed and "nouns_margin" in printed and "names_acc" in printed
    assert "intra SS" in printed and "CC BY-SA 4.0" in printed  # the benchmarks, with the data's licence
    assert os.path.isfile(out / "adapter" / "adapter_config.json")
    assert os.path.isfile(out / "adapter" / "adapter_model.safetensors")
    # the side adapter, saved alone, in peft's folder for a named adapter
    side = out / "definitional" / "adapter"
    assert os.listdir(side) == ["definitional"]
    side_config = json.loads((side / "definitional" / "adapter_config.json").read_text())
    assert side_config["init_seed"] == json.loads((out / "adapter" / "adapter_config.json").read_text())["init_seed"]
    assert sorted(os.listdir(side / "definitional")) == sorted(os.listdir(out / "adapter"))
    assert not os.path.exists(out / "attribute") and not os.path.exists(out / "metrics" / "attribute_search.json")
    for name in ("encoder.json", "summary.json", "rewrite_debias.json", "training_history.json", "debias_report.json",
                 "bias_base.json"):
        assert os.path.isfile(out / "metrics" / name), name
    held_out = json.loads((out / "metrics" / "debias_report.json").read_text())
    assert held_out["table"][0]["model"] == "base" and held_out["rows"] == 400  # the report split's rows
    assert held_out["controls"] == {"nouns": 8, "names": 8} and held_out["attribute_rows"] == 0
    search = json.loads((out / "metrics" / "rewrite_debias.json").read_text())
    assert search["settings"]["n_rows"] == 380  # the search split's rows: never the reported ones
    for name in ("convergence.png", "encoder.png", "rewrite_debias.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_fast_mode_on_a_masked_lm_folder(tmp_path, capsys):
    folder = tmp_path / "tiny-bert"
    tok = word_tokenizer("bert")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(folder), "--fast", "--output_dir", str(out), "--min_context_words", "0",
                 "--threads", "1", "--report_to", "none", "--plots", "false", "--attribute_steps", "0"]) == 0
    assert "pronoun edit chosen by the debias policy" in capsys.readouterr().out
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["objective"] == "masked_lm"
    rewrite = json.loads((out / "metrics" / "rewrite_debias.json").read_text())
    assert rewrite["settings"]["objective"] == "masked_lm" and rewrite["settings"]["n_lms_tokens"] > 0
    assert 0.0 <= rewrite["base"]["lms"] <= 1.0 and rewrite["base"]["perplexity"] is None  # masked LM: an accuracy


def test_train_then_evaluate_then_rewrite_with_merge(tmp_path, tiny_model_dir):
    out = str(tmp_path / "run")
    common = ["--model", tiny_model_dir, "--min_context_words", "0", "--max_rows_per_class", "40", "--max_test_rows", "12",
              "--neutral_rows", "8", "--control_rows", "4", "--plots", "false", "--classes", "M:he,F:she"]
    assert main(["train", *common, "--output_dir", out, "--max_steps", "2", "--rows_per_gradient", "4",
                 "--eval_steps", "1", "--save_steps", "1", "--report_to", "none"]) == 0
    assert main(["evaluate", *common, "--output_dir", out]) == 0
    assert main(["rewrite", *common, "--output_dir", out, "--policies", "strengthen:F", "--lrs", "100", "10", "1", "--feature_factors", "1", "-1",
                 "--lms_floor", "0.0", "--control_floor", "0.0", "--merge_policy", "strengthen:F"]) == 0
    assert os.path.isfile(os.path.join(out, "merged", "config.json"))
    assert os.path.isfile(os.path.join(out, "merged", "model.safetensors"))


def test_bias_eval_scores_a_model_and_an_adapters_rewrite(tmp_path, tiny_model_dir, capsys):
    import gradiend_peft
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "bias")
    assert main(["bias-eval", "--model", tiny_model_dir, "--output_dir", out, "--max_items", "4"]) == 0
    table = capsys.readouterr().out
    assert "CC BY-SA 4.0" in table  # the data's licence is shown with the results
    saved = [f for f in os.listdir(os.path.join(out, "metrics")) if f.startswith("bias_")]
    assert len(saved) == 1
    report = json.load(open(os.path.join(out, "metrics", saved[0])))
    assert report["stereoset_intrasentence"]["n"] == 4 and report["crows_pairs"]["n"] == 4

    adapter = str(tmp_path / "adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), gradiend_peft.GradiendConfig(init_seed=0))
    gradiend_peft.save_adapter(model, adapter)
    argv = ["bias-eval", "--model", tiny_model_dir, "--adapter", adapter, "--output_dir", out, "--max_items", "4",
            "--benchmarks", "crows_pairs"]
    assert main(argv + ["--feature_factor", "1", "--lr", "1000"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("base", "rewrite"))]
    assert [line.split()[0] for line in lines] == ["base", "rewrite"]
    assert main(argv) == 1 and "--feature_factor F --lr L" in capsys.readouterr().err  # no rewrite given


def test_bias_eval_scores_race_and_religion_and_compares_item_by_item(tmp_path, tiny_model_dir, capsys):
    import shutil

    out, other = str(tmp_path / "bias"), str(tmp_path / "other")
    shutil.copytree(tiny_model_dir, other)
    argv = ["bias-eval", "--model", tiny_model_dir, "--compare_to", other, "--output_dir", out,
            "--max_items", "3", "--domain", "race,religion"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Bias benchmarks, race:" in printed and "Bias benchmarks, religion:" in printed
    assert printed.count("Paired changes") == 2 and "CC BY-SA 4.0" in printed
    assert not any(line.startswith("Wino") for line in printed.splitlines())  # Wino measures gender only
    saved = sorted(f for f in os.listdir(os.path.join(out, "metrics")) if f.startswith("bias_"))
    assert len(saved) == 4 and sum(f.endswith("_race.json") for f in saved) == 2
    report = json.load(open(os.path.join(out, "metrics", saved[0])))
    assert report["domain"] == "race" and len(report["items"]["crows_pairs"]["ids"]) == 3
    assert main(["bias-eval", "--model", tiny_model_dir, "--output_dir", out, "--domain", "age"]) == 1
    assert "unknown bias domain 'age'" in capsys.readouterr().err
    assert main(["bias-eval", "--model", tiny_model_dir, "--compare_to", tiny_model_dir, "--output_dir", out]) == 1
    assert "--compare_to names the model --model already scores" in capsys.readouterr().err
