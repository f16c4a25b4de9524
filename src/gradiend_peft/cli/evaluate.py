"""``gradiend-peft evaluate``: a trained adapter's encoder on held-out rows."""

from __future__ import annotations

from typing import Any

from .steps import evaluate, load_adapter, load_base, mine, setup


def run(run_args, model_args, data_args, output) -> Any:
    """Loads ``<output_dir>/adapter`` (or ``--adapter``) and writes the encoder report; returns it."""
    setup(run_args)
    base, tokenizer = load_base(model_args)
    peft_model = load_adapter(base, run_args, output.output_dir)
    data = mine(data_args, tokenizer, peft_model)
    return evaluate(peft_model, tokenizer, data, output.output_dir, run_args)
