"""The command line with three classes: train (one adapter per pair), evaluate and rewrite on its output, on a tiny
GPT-2 saved to a temporary folder and a small text file."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gradiend_peft.cli import main
from gradiend_peft.evaluation.class_pairs import CrossEncodingMatrix
from gradiend_peft.pair_adapters import read_pair_index

from test_class_pairs import NEUTRAL, TEXTS
from tiny import word_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = "A:he,B:she,C:it"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    tok = word_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def common(tiny_model_dir, tmp_path_factory):
    text_file = tmp_path_factory.mktemp("text") / "texts.txt"
    text_file.write_text("\n".join(TEXTS + NEUTRAL * 3) + "\n")
    return ["--model", tiny_model_dir, "--text_file", str(text_file), "--min_context_words", "2",
            "--max_test_rows", "12", "--neutral_rows", "4", "--control_rows", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def trained_run(common, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["train", *common, "--classes", CLASSES, "--pairs", "A-B,A-C", "--output_dir", str(out),
                 "--max_steps", "2", "--rows_per_gradient", "4", "--eval_steps", "1", "--save_steps", "2",
                 "--report_to", "none"])
    assert code == 0
    return out


def test_train_with_three_classes_writes_one_adapter_per_pair_the_table_and_both_matrices(trained_run):
    out = trained_run
    index = read_pair_index(str(out / "adapter"))
    assert index.adapters == {("A", "B"): "A-vs-B", ("A", "C"): "A-vs-C"}  # the pairs of --pairs
    assert index.classes == {"A": ("he",), "B": ("she",), "C": ("it",)}
    table = json.loads((out / "metrics" / "pairs.json").read_text())
    assert [row["pair"] for row in table] == ["A-B", "A-C"]
    cross = CrossEncodingMatrix.from_dict(json.loads((out / "metrics" / "cross_encoding.json").read_text()))
    for row, name in zip(table, index.adapters.values()):
        report = json.loads((out / "pairs" / name / "metrics" / "encoder.json").read_text())
        assert row["r"] == report["correlation"] and row["accuracy"] == report["accuracy"]
        assert row["rows"] == len(report["rows"]) and row["validation r"] is not None
        assert (out / "pairs" / name / "metrics" / "training_history.json").is_file()
        assert (out / "training" / name / "checkpoint-2").is_dir()  # each pair's trainer in its own folder
        for plot in ("convergence.png", "encoder.png"):
            assert (out / "pairs" / name / "plots" / plot).read_bytes()[:8] == PNG
    assert [row["r"] for row in table] == list(cross.diagonal)
    cosines = json.loads((out / "metrics" / "decoder_cosines.json").read_text())
    assert cosines["components"] == ["bias", "weight_0"]
    for plot in ("cross_encoding.png", "decoder_cosines.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == PNG
    assert not (out / "adapter" / "adapter_config.json").exists()


def test_evaluate_on_a_pairs_output_writes_the_same_reports(trained_run, common, capsys):
    out = trained_run
    before = json.loads((out / "metrics" / "pairs.json").read_text())
    assert main(["evaluate", *common, "--output_dir", str(out), "--plots", "false", "--pairs", "C-A"]) == 0
    printed = capsys.readouterr().out
    assert "cross-encoding r" in printed and "decoder bias" in printed
    after = json.loads((out / "metrics" / "pairs.json").read_text())
    assert [row["pair"] for row in after] == ["A-C"]  # --pairs in either order of the classes
    reference = next(row for row in before if row["pair"] == "A-C")
    assert after[0]["rows"] == reference["rows"]
    assert after[0]["r"] == pytest.approx(reference["r"], abs=1024 * torch.finfo(torch.float32).eps)


def test_rewrite_on_a_pairs_output_searches_each_pair_and_merges_one(trained_run, common, capsys):
    out = trained_run
    search = ["--policies", "strengthen:C", "--lrs", "100", "10", "--feature_factors", "1", "-1", "--lms_floor", "0",
              "--control_floor", "0", "--refine_rounds", "0", "--plots", "false"]
    assert main(["rewrite", *common, "--output_dir", str(out), *search]) == 0
    printed = capsys.readouterr().out
    assert "pair A-C (adapter A-vs-C)" in printed
    assert "pair A-B" not in printed  # strengthen:C does not apply to A-B
    result = json.loads((out / "pairs" / "A-vs-C" / "metrics" / "rewrite_strengthen_C.json").read_text())
    assert sorted(result["classes"]) == ["A", "C"]
    assert not (out / "pairs" / "A-vs-B" / "metrics" / "rewrite_strengthen_C.json").exists()
    assert main(["rewrite", *common, "--output_dir", str(out), *search, "--merge_policy", "strengthen:C"]) == 1
    assert "choose the pair whose rewrite to merge with --pairs" in capsys.readouterr().err
    assert main(["rewrite", *common, "--output_dir", str(out), *search, "--merge_policy", "strengthen:C",
                 "--pairs", "A-C"]) == 0
    assert (out / "merged" / "model.safetensors").is_file()


def test_what_a_pairs_output_cannot_do_is_refused(trained_run, common, capsys):
    out = str(trained_run)
    assert main(["evaluate", *common, "--classes", "X:he,Y:she,Z:it", "--output_dir", out]) == 1
    assert "were trained for ['A', 'B', 'C']" in capsys.readouterr().err
    assert main(["rewrite", *common, "--output_dir", out, "--pairs", "A-B", "--policies", "strengthen:C"]) == 1
    assert "--policies names ['C'], which no loaded pair has" in capsys.readouterr().err
    assert main(["evaluate", *common, "--output_dir", out, "--pairs", "B-C"]) == 1
    assert "--pairs asks for ['B-C']" in capsys.readouterr().err
    assert main(["train", *common, "--classes", CLASSES, "--output_dir", out, "--resume_from_checkpoint", "true"]) == 1
    assert "resuming them is not supported" in capsys.readouterr().err


def test_three_classes_are_refused_where_there_are_no_pair_adapters(tmp_path, common, capsys):
    assert main(["evaluate", *common, "--classes", CLASSES, "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds no pair adapters" in err and "gradiend-peft train --classes" in err
    assert main(["train", *common, "--classes", "A:he,B:she", "--pairs", "A-B", "--output_dir", str(tmp_path)]) == 1
    assert "--pairs chooses pairs among three or more classes" in capsys.readouterr().err
    assert main(["train", *common, "--classes", CLASSES, "--pairs", "A-D", "--output_dir", str(tmp_path)]) == 1
    assert "Cannot read pair 'A-D'" in capsys.readouterr().err
    assert main(["demo", *common, "--classes", CLASSES, "--output_dir", str(tmp_path), "--fast"]) == 1
    assert "exactly two classes" in capsys.readouterr().err
    assert main(["demo", *common, "--pairs", "M-F", "--output_dir", str(tmp_path), "--fast"]) == 1
    assert "the demo trains one adapter of two classes" in capsys.readouterr().err
