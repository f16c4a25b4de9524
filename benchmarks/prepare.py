"""Shared inputs of the benchmarks: tokenizers, models from configs, mined rows, neutral text.

Everything here runs in OUR environment (it uses ``gradiend_peft.data`` to mine rows); the results are written to a
work folder (``save_pretrained`` models and tokenizers, rows as JSON) that both workers read, so that ours and the
reference see the same weights, the same tokenizer and the same rows.

Models (random initialisation from configs, seeded):

=================  ===========================================================================
``bert-tiny``      BERT, 2 layers, hidden 128, 2 heads, FFN 512 (the shape of google's bert-tiny)
``bert-small``     BERT, 4 layers, hidden 512, 8 heads, FFN 2048 (the shape of bert-small)
``bert-base``      BERT, 12 layers, hidden 768, 12 heads, FFN 3072 (bert-base); ``layers`` may be lowered
``gpt2-tiny``      GPT-2, 2 layers, hidden 128, 2 heads
``llama-tiny``     Llama, 2 layers, hidden 128, 4 heads (2 key/value heads), FFN 512, untied head
``smollm2-135m-shape``  SmolLM2-135M's architecture and sizes (49,152 tied embeddings), random weights
=================  ===========================================================================

The BERT models share one uncased WordPiece tokenizer (30,522 entries, bert-base's vocabulary size) trained on the
package's English corpus; GPT-2 and Llama share one byte-level BPE tokenizer (8,000 entries). Every model allows 512
positions, because the reference pads every row to 256 tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

MODEL_SPECS: dict[str, dict[str, Any]] = {
    "bert-tiny": {"family": "bert", "layers": 2, "hidden": 128, "heads": 2, "ffn": 512},
    "bert-small": {"family": "bert", "layers": 4, "hidden": 512, "heads": 8, "ffn": 2048},
    "bert-base": {"family": "bert", "layers": 12, "hidden": 768, "heads": 12, "ffn": 3072},
    "gpt2-tiny": {"family": "gpt2", "layers": 2, "hidden": 128, "heads": 2, "ffn": 512},
    "llama-tiny": {"family": "llama", "layers": 2, "hidden": 128, "heads": 4, "ffn": 512},
    # SmolLM2-135M's shapes (Llama; 30 layers, hidden 576, 9 heads / 3 key-value heads, FFN 1536, 49,152 tied
    # embeddings) with random weights: the real weights do not change the cost, and they do not fit the GPU carry
    "smollm2-135m-shape": {"family": "llama", "layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3, "ffn": 1536,
                           "vocab": 49152, "tied": True},
}
OBJECTIVE = {"bert": "masked_lm", "gpt2": "causal_lm", "llama": "causal_lm"}
TOKENIZER_KIND = {"bert": "wordpiece", "gpt2": "bpe", "llama": "bpe"}
FEATURE = {"M": ["he"], "F": ["she"]}
NEUTRAL_EXCLUDE = ["him", "his", "her", "hers", "himself", "herself"]
MAX_POSITIONS = 512


def _corpus() -> list[str]:
    from gradiend_peft.data import load_corpus

    return load_corpus("english")


def build_tokenizer(kind: str, folder: str):
    """Trains (once, cached in ``folder``) and returns the benchmark tokenizer of ``kind``."""
    from transformers import PreTrainedTokenizerFast

    path = os.path.join(folder, f"tokenizer-{kind}")
    if os.path.isdir(path):
        return PreTrainedTokenizerFast.from_pretrained(path)
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = _corpus()
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=30522, special_tokens=specials))
        vocab = tok.get_vocab()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=MAX_POSITIONS,
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=8000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(texts, trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
            pad_token="<|endoftext|>", model_max_length=MAX_POSITIONS,
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    fast.save_pretrained(path)
    return fast


def build_model(name: str, tokenizer, seed: int = 0, layers: int | None = None):
    """A randomly initialised model of the named shape (see the module docstring), in eval mode."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = dict(MODEL_SPECS[name])
    if layers is not None:
        spec["layers"] = layers
    torch.manual_seed(seed)
    vocab = max(len(tokenizer), spec.get("vocab", 0))
    if spec["family"] == "bert":
        cfg = BertConfig(
            vocab_size=vocab, hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], intermediate_size=spec["ffn"], max_position_embeddings=MAX_POSITIONS,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertForMaskedLM(cfg)
    elif spec["family"] == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=spec["hidden"], n_layer=spec["layers"], n_head=spec["heads"],
            n_inner=spec["ffn"], n_positions=MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["ffn"],
            num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
            num_key_value_heads=spec.get("kv_heads", 2), max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=spec.get("tied", False), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(cfg)
    return model.eval()


def mine(tokenizer, objective: str, seed: int = 0, max_words: int = 30) -> dict[str, Any]:
    """Mined he/she rows (all three splits) and neutral sentences, filtered to rows our collator accepts.

    Returns ``{"train": [...], "validation": [...], "test": [...], "neutral": [str, ...]}``; rows are dicts with the
    columns of ``gradiend_peft.data.mine_pairs``.
    """
    from gradiend_peft.data import collator_for, mine_neutral, mine_pairs

    texts = _corpus()
    pairs = mine_pairs(texts, FEATURE, min_context_words=3, max_words=max_words, seed=seed, progress=False)
    neutral = mine_neutral(
        texts, FEATURE, exclude_words=NEUTRAL_EXCLUDE, min_words=5, max_words=max_words, max_rows=2000, seed=seed,
        progress=False,
    )
    collate = collator_for(tokenizer, objective)
    out: dict[str, Any] = {}
    for split in ("train", "validation", "test"):
        kept = []
        for row in pairs[split]:
            try:
                collate.encode(row)
            except ValueError:
                continue
            kept.append(dict(row))
        out[split] = kept
    out["neutral"] = list(neutral["text"])
    return out


def prepare(work: str, name: str, seed: int = 0, layers: int | None = None) -> dict[str, Any]:
    """Writes model + tokenizer (``work/<name>[-L<layers>]/model``) and rows (``rows.json``) once; returns paths."""
    spec = MODEL_SPECS[name]
    family = spec["family"]
    tag = name if layers is None else f"{name}-L{layers}"
    folder = os.path.join(work, tag)
    model_dir = os.path.join(folder, "model")
    rows_path = os.path.join(work, f"rows-{TOKENIZER_KIND[family]}-{OBJECTIVE[family]}.json")
    tokenizer = build_tokenizer(TOKENIZER_KIND[family], work)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        model = build_model(name, tokenizer, seed=seed, layers=layers)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
    if not os.path.isfile(rows_path):
        rows = mine(tokenizer, OBJECTIVE[family], seed=seed)
        tmp = rows_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
        os.replace(tmp, rows_path)
    return {"model_dir": model_dir, "rows": rows_path, "objective": OBJECTIVE[family], "family": family, "tag": tag}


def fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read())
    return digest.hexdigest()[:12]
