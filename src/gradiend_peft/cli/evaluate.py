"""``gradiend-peft evaluate``: a trained adapter's encoder on held-out rows."""

from __future__ import annotations

from typing import Any

from .steps import evaluate, load_adapter, load_base, mine, setup


def run(run_args, model_args, data_args, output) -> Any:
    """Loads ``<output_dir>/adapter`` (or ``--adapter``) and writes the encoder report; returns it. On pair adapters
    (three or more classes), every pair's report and the matrices (`gradiend_peft.cli.class_pairs`)."""
    from . import class_pairs

    if class_pairs.is_pair_output(run_args, output.output_dir):
        return class_pairs.evaluate(run_args, model_args, data_args, output)
    class_pairs.check_single_adapter_run(run_args, data_args, output.output_dir)
    setup(run_args)
    base, tokenizer = load_base(model_args)
    peft_model = load_adapter(base, run_args, output.output_dir)
    data = mine(data_args, tokenizer, peft_model)
    return evaluate(peft_model, tokenizer, data, output.output_dir, run_args)
