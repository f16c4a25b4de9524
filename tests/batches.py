"""Hand-built GRADIEND batches for the core tests (independent of gradiend_peft.data)."""

from __future__ import annotations

import torch

from tiny import word_tokenizer

# (text before the slot, text after, factual, alternative, label)
ROWS = [
    ("the nurse said that", "would come .", "she", "he", 1.0),
    ("the doctor said that", "would come .", "he", "she", -1.0),
    ("my mother said that", "went home .", "she", "he", 1.0),
    ("my father said that", "went home .", "he", "she", -1.0),
    ("the queen said that", "was happy .", "she", "he", 1.0),
    ("the king said that", "was sad .", "he", "she", -1.0),
    ("the woman walks with her dog and", "is happy .", "she", "he", 1.0),
    ("the man walks with his dog and", "is happy .", "he", "she", -1.0),
]


def masked_lm_batch(rows=ROWS) -> dict[str, torch.Tensor]:
    tok = word_tokenizer("bert")
    texts = [f"{pre} {tok.mask_token} {post}" for pre, post, *_ in rows]
    enc = tok(texts, return_tensors="pt", padding=True)
    fact = torch.full_like(enc["input_ids"], -100)
    alt = torch.full_like(enc["input_ids"], -100)
    for i, (_, _, f, a, _) in enumerate(rows):
        pos = (enc["input_ids"][i] == tok.mask_token_id).nonzero().item()
        fact[i, pos] = tok.convert_tokens_to_ids(f)
        alt[i, pos] = tok.convert_tokens_to_ids(a)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "factual_labels": fact,
            "alternative_labels": alt, "label": torch.tensor([r[4] for r in rows])}


def causal_lm_batch(rows=ROWS) -> dict[str, torch.Tensor]:
    tok = word_tokenizer("gpt2")
    prefixes = [tok(pre.capitalize())["input_ids"] for pre, *_ in rows]
    length = max(map(len, prefixes))
    ids = torch.full((len(rows), length), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    fact = torch.full_like(ids, -100)
    alt = torch.full_like(ids, -100)
    for i, (prefix, (_, _, f, a, _)) in enumerate(zip(prefixes, rows)):
        ids[i, : len(prefix)] = torch.tensor(prefix)
        mask[i, : len(prefix)] = 1
        (f_id,), (a_id,) = tok(" " + f)["input_ids"], tok(" " + a)["input_ids"]
        fact[i, len(prefix) - 1] = f_id
        alt[i, len(prefix) - 1] = a_id
    return {"input_ids": ids, "attention_mask": mask, "factual_labels": fact, "alternative_labels": alt,
            "label": torch.tensor([r[4] for r in rows])}


def batch_for(family: str) -> dict[str, torch.Tensor]:
    return masked_lm_batch() if family in ("bert", "roberta", "distilbert") else causal_lm_batch()
