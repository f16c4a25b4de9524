"""Shared helpers of the training tests (no tests here): learnable he/she rows and tiny GRADIEND models.

The rows' class is fixed by their context ("my mother said that [MASK] ..." is "she"), so the feature is
learnable; train and validation rows use different templates, so the validation rows are held out.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from peft import get_peft_model

import gradiend_peft  # noqa: F401  (registers GRADIEND with peft)
from gradiend_peft import GradiendConfig
from gradiend_peft.training import GradiendTrainingArguments
from tiny import MODEL_BUILDERS, TOKENIZER_KIND, word_tokenizer

NOUNS = {
    "M": ["father", "brother", "son", "king", "man", "boy"],
    "F": ["mother", "sister", "daughter", "queen", "woman", "girl"],
}
PRONOUN = {"M": "he", "F": "she"}
TRAIN_TEMPLATES = [
    "my {noun} said that [MASK] would come .",
    "the {noun} said that [MASK] went home .",
    "the {noun} walks with the dog and [MASK] is happy .",
    "when the {noun} ran home , [MASK] was sad .",
    "the old {noun} liked the book and [MASK] liked the car .",
    "my {noun} likes the city but [MASK] likes the road .",
]
VALIDATION_TEMPLATES = [
    "there the {noun} was very happy when [MASK] ran to the store .",
    "the {noun} is my friend and [MASK] is very good .",
]
TEST_TEMPLATES = [
    "the small {noun} said that [MASK] liked the cat .",
]


def rows(templates, capitalize: bool = False) -> list[dict]:
    out = []
    for template in templates:
        for cls, other in (("M", "F"), ("F", "M")):
            for noun in NOUNS[cls]:
                text = template.format(noun=noun)
                if capitalize:
                    text = text[0].upper() + text[1:]
                out.append({
                    "text": text, "factual": PRONOUN[cls], "alternative": PRONOUN[other], "factual_class": cls,
                    "alternative_class": other, "label": 1.0 if cls == "M" else -1.0,
                })
    return out


def pairs(family: str = "bert") -> datasets.DatasetDict:
    causal = TOKENIZER_KIND[family] == "gpt2"
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows(TRAIN_TEMPLATES, causal)),
        "validation": datasets.Dataset.from_list(rows(VALIDATION_TEMPLATES, causal)),
        "test": datasets.Dataset.from_list(rows(TEST_TEMPLATES, causal)),
    })


def peft_model(family: str = "bert", seed: int = 0, dtype=None, **config):
    """A tiny model with a GRADIEND adapter (``dtype``: the base model's dtype; the adapter stays float32)."""
    config.setdefault("init_seed", 0)
    base = MODEL_BUILDERS[family](seed)
    if dtype is not None:
        base = base.to(dtype)
    return get_peft_model(base, GradiendConfig(**config))


def tokenizer(family: str = "bert"):
    return word_tokenizer(TOKENIZER_KIND[family])


def arguments(output_dir, **overrides) -> GradiendTrainingArguments:
    """Small, quiet, fast arguments for tests."""
    values = dict(output_dir=str(output_dir), rows_per_gradient=8, report_to="none",
                  disable_tqdm=True, save_strategy="no", eval_steps=20, logging_steps=10,
                  dataloader_pin_memory=False, use_cpu=True)
    values.update(overrides)
    return GradiendTrainingArguments(**values)


@pytest.fixture(autouse=False)
def one_thread():
    """Runs a test with one torch thread (shared 2-core machines: 2 threads can be many times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
