"""``gradiend-peft train``: mine rows, train a GRADIEND adapter, evaluate its encoder."""

from __future__ import annotations

import logging
from typing import Any

from .steps import attach, evaluate, load_base, mine, parse_classes, setup, train

logger = logging.getLogger(__name__)


def run(run_args, model_args, data_args, train_args) -> dict[str, Any]:
    """Trains and evaluates; returns the training summary (see `gradiend_peft.cli.steps`). Three or more classes:
    one adapter per pair (`gradiend_peft.cli.class_pairs`), and each pair's summary by pair label."""
    from . import class_pairs

    if class_pairs.uses_pairs(data_args):
        return class_pairs.train(run_args, model_args, data_args, train_args)
    setup(run_args)
    base, tokenizer = load_base(model_args)
    peft_model = attach(base, model_args, parse_classes(data_args.classes), train_args.seed)
    data = mine(data_args, tokenizer, peft_model)
    summary = train(peft_model, tokenizer, data, train_args, run_args)
    evaluate(peft_model, tokenizer, data, train_args.output_dir, run_args)
    logger.info("Training summary: %s", summary)
    return summary
