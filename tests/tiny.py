"""Tiny models and tokenizers built on the spot, so that tests need no download.

`word_tokenizer(kind)` builds a real `PreTrainedTokenizerFast` over a small fixed word list:
- ``"bert"``: WordPiece-style with [CLS]/[SEP]/[MASK]/[PAD], lower-casing, whitespace and punctuation split;
- ``"gpt2"``: byte-level BPE trained on the word list, words carry their leading space (" he");
The model builders return randomly initialised transformers models sized to that vocabulary.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

WORDS = (
    "the a an he she they it him her them his hers their man woman men women boy girl king queen "
    "nurse doctor said that would come went home to store was is are were and or but not with for "
    "of in on at by from my mother father sister brother son daughter likes like liked dog cat "
    "there then this these those here where when what who why how runs run ran walks walk walked "
    "big small red blue green happy sad good bad new old very much many some all any one two three "
    "book house car tree city road day night time year people child children friend friends"
).split()

CORPUS = [
    "The nurse said that she would come.",
    "The doctor said that he would come.",
    "My mother said that she went home.",
    "My father said that he went home.",
    "They said that they would come to the store.",
    "The man walks with his dog and the woman walks with her cat.",
    "There was a king and a queen in the old city.",
    "The children ran home when it was night.",
] + [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 8)]


@functools.lru_cache(maxsize=None)
def word_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A small real fast tokenizer: ``"bert"`` (WordPiece, masked LM) or ``"gpt2"`` (byte-level BPE)."""
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)) + list(".,!?'") + ["##s", "##e", "##d"])}
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    if kind == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        # every word both at the start of a text and after a space, so " he" and "He" are single tokens
        texts = CORPUS + [" ".join(WORDS)] * 3 + [w.capitalize() + " " + w for w in WORDS] * 2
        tok.train_from_iterator(texts, trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        fast.pad_token = fast.eos_token
        return fast
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2) -> BertForMaskedLM:
    _seeded(seed)
    tok = word_tokenizer("bert")
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
    )
    return BertForMaskedLM(cfg).eval()


def tiny_roberta(seed: int = 0) -> RobertaForMaskedLM:
    _seeded(seed)
    tok = word_tokenizer("bert")
    cfg = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=70, pad_token_id=tok.pad_token_id,
    )
    return RobertaForMaskedLM(cfg).eval()


def tiny_distilbert(seed: int = 0) -> DistilBertForMaskedLM:
    _seeded(seed)
    tok = word_tokenizer("bert")
    cfg = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    return DistilBertForMaskedLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    _seeded(seed)
    tok = word_tokenizer("gpt2")
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    _seeded(seed)
    tok = word_tokenizer("gpt2")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _seeded(seed)
    tok = word_tokenizer("gpt2")
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=16,
    )
    return Gemma3ForCausalLM(cfg).eval()


MODEL_BUILDERS = {
    "bert": tiny_bert,
    "roberta": tiny_roberta,
    "distilbert": tiny_distilbert,
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "gemma3": tiny_gemma3,
}
TOKENIZER_KIND = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "gpt2": "gpt2", "llama": "gpt2", "gemma3": "gpt2"}
