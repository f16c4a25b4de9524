"""Small models and tokenizers made on the spot, for the examples that show one feature of the training loop.

They need no download: the tokenizer is trained on the package's embedded English corpus (a few seconds), the model
is built from a config with random weights. A random model still has a gender feature for GRADIEND to find: the
gradient of predicting " he" differs from that of predicting " she" through the two tokens' output embeddings.
"""

from __future__ import annotations

import torch


def english_texts(max_words: int = 30) -> list[str]:
    """The embedded English corpus (WordNet examples and a World English Bible derived text), short sentences."""
    from gradiend_peft.data import load_corpus

    return [t for t in load_corpus("english") if len(t.split()) <= max_words]


def gpt2_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer like GPT-2's (words carry their leading space: " he"), trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


def tiny_gpt2(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A randomly initialised GPT-2 (causal LM) sized to ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()
