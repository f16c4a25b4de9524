"""``gradiend-peft rewrite``: the rewrite search per policy; optionally save the rewritten model."""

from __future__ import annotations

from .steps import format_table, load_adapter, load_base, maybe_merge, mine, rewrite, setup


def run(run_args, model_args, data_args, output, rewrite_args) -> list:
    """Searches every policy's rewrite, prints the before/after table, saves ``--merge_policy``'s choice; returns
    the table. On pair adapters (three or more classes), the search per pair (`gradiend_peft.cli.class_pairs`)."""
    from . import class_pairs

    if class_pairs.is_pair_output(run_args, output.output_dir):
        return class_pairs.rewrite_each_pair(run_args, model_args, data_args, output, rewrite_args)
    class_pairs.check_single_adapter_run(run_args, data_args, output.output_dir)
    setup(run_args)
    base, tokenizer = load_base(model_args)
    peft_model = load_adapter(base, run_args, output.output_dir)
    data = mine(data_args, tokenizer, peft_model)
    results, table = rewrite(peft_model, tokenizer, data, output.output_dir, rewrite_args, run_args)
    print(format_table(table))
    maybe_merge(peft_model, tokenizer, results, rewrite_args, output.output_dir)
    return table
