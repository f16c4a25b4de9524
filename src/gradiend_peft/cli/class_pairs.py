"""Features of three or more classes on the command line: one adapter per pair of classes.

``gradiend-peft train --classes "A:w1|w2,B:w3,C:w4"`` trains one adapter per pair (every pair, or ``--pairs A-B,A-C``),
each on its own mined rows, evaluates every encoder on its pair's held-out rows and against the others (the
cross-encoding matrix and the decoder cosine matrix, `gradiend_peft.evaluation.class_pairs`). ``evaluate`` and
``rewrite`` work pair by pair on such an output. The output folder:

    <output_dir>/adapter/gradiend_pairs.json   the index: classes, words, and per pair its folder, classes, signs
    <output_dir>/adapter/<A-vs-B>/             each pair's adapter (config, weights, card, training summary)
    <output_dir>/training/<A-vs-B>/            each pair's trainer checkpoints
    <output_dir>/pairs/<A-vs-B>/metrics/       each pair's training history, encoder report, rewrite results
    <output_dir>/pairs/<A-vs-B>/plots/         each pair's convergence, encoder and rewrite plots
    <output_dir>/metrics/pairs.json            the summary table: per pair, held-out r and accuracy
    <output_dir>/metrics/cross_encoding.json   the cross-encoding matrix
    <output_dir>/metrics/decoder_cosines.json  the decoder cosine matrix
    <output_dir>/plots/cross_encoding.png, <output_dir>/plots/decoder_cosines.png
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Optional

from ..data import Feature
from ..data.class_pairs import pair_feature, pair_label, pairs_of_classes, parse_class_pairs
from ..pair_adapters import PairIndex, is_pair_folder, load_pair_adapters, save_pair_adapters
from .steps import (
    FeatureData,
    format_table,
    gradiend_config,
    load_base,
    maybe_merge,
    mine,
    parse_class_words,
    rewrite,
    save_outputs,
    setup,
    training_line,
)

logger = logging.getLogger(__name__)

def uses_pairs(data_args) -> bool:
    """Whether ``--classes`` names three or more classes (one adapter per pair); two classes with ``--pairs`` are
    refused, and so is no ``--classes`` (only pair adapters, whose index names the classes, go without)."""
    if data_args.classes is None:
        raise ValueError("--classes is required: the feature's classes with their words, e.g. --classes "
                         "'SG:is,PL:are' (three or more classes train one adapter per pair).")
    count = len(parse_class_words(data_args.classes))
    if count <= 2 and data_args.pairs:
        raise ValueError(f"--pairs chooses pairs among three or more classes; --classes {data_args.classes!r} names "
                         f"{count}. Leave --pairs out (two classes train one adapter).")
    return count > 2


def adapter_folder(run_args, out: str) -> str:
    return run_args.adapter or os.path.join(out, "adapter")


def is_pair_output(run_args, out: str) -> bool:
    """Whether the adapter folder of ``evaluate`` / ``rewrite`` holds pair adapters (a pair index)."""
    return is_pair_folder(adapter_folder(run_args, out))


def check_single_adapter_run(run_args, data_args, out: str) -> None:
    """For ``evaluate`` / ``rewrite`` on a folder without pair adapters: refuses three or more classes (or
    ``--pairs``), naming how to train pair adapters."""
    if uses_pairs(data_args):
        raise ValueError(f"--classes names {len(parse_class_words(data_args.classes))} classes, but "
                         f"{adapter_folder(run_args, out)!r} holds no pair adapters (no gradiend_pairs.json): train "
                         f"one adapter per pair first, gradiend-peft train --classes '{data_args.classes}' "
                         f"--output_dir {out}.")


def parse_feature(spec: str) -> Feature:
    """``--classes`` of two or more classes as a `Feature` (its labelled pair: the first two classes)."""
    classes = parse_class_words(spec)
    if len(classes) < 2:
        raise ValueError(f"--classes needs at least two classes, got {len(classes)} in {spec!r} (e.g. 'A:w1,B:w2').")
    return Feature(classes=classes, pair=tuple(list(classes)[:2]))


def pair_folder(out: str, adapter: str) -> str:
    """``<output_dir>/pairs/<adapter>``: one pair's metrics and plots."""
    return os.path.join(out, "pairs", adapter)


def mine_each_pair(data_args, tokenizer, model, feature: Feature, pairs) -> dict[tuple[str, str], FeatureData]:
    """Each pair's rows (mined for that pair only), neutral texts and control rows (`gradiend_peft.cli.steps.mine`)."""
    data = {}
    for pair in pairs:
        logger.info("Mining the rows of pair %s.", pair_label(pair))
        data[pair] = mine(data_args, tokenizer, model, feature=pair_feature(feature, pair))
    return data


def evaluate_each_pair(model, tokenizer, data: dict, adapters: dict, out: str, run,
                       summaries: Optional[dict] = None) -> Any:
    """Every pair's encoder report, the summary table and both matrices, saved and printed."""
    from ..evaluation.class_pairs import evaluate_pairs

    neutral = next(iter(data.values())).neutral  # the same for every pair: no word of any class
    evaluation = evaluate_pairs(model, {pair: data[pair].pairs["test"] for pair in data}, tokenizer=tokenizer,
                                neutral=neutral or None, adapters=adapters)
    table = evaluation.table()
    for row, pair in zip(table, evaluation.cross.pairs):
        report = evaluation.reports[pair]
        folder = pair_folder(out, adapters[pair])
        report.save_json(os.path.join(folder, "metrics", "encoder.json"))
        if summaries is not None:
            row["validation r"] = summaries[pair].get("correlation")
            row["converged"] = summaries[pair].get("converged")
        if run.plots:
            from ..plotting import plot_encoder_distributions

            plot_encoder_distributions(report, os.path.join(folder, "plots", "encoder.png"))
    save_outputs(out, "pairs", table)
    evaluation.cross.save_json(os.path.join(out, "metrics", "cross_encoding.json"))
    evaluation.decoder_cosines.save_json(os.path.join(out, "metrics", "decoder_cosines.json"))
    if run.plots:
        from ..plotting import plot_cross_encoding, plot_decoder_cosines

        plot_cross_encoding(evaluation.cross, os.path.join(out, "plots", "cross_encoding.png"))
        plot_decoder_cosines(evaluation.decoder_cosines, os.path.join(out, "plots", "decoder_cosines.png"))
    print(format_table(table))
    print(evaluation.cross.summary())
    print(evaluation.decoder_cosines.summary())
    return evaluation


def train(run_args, model_args, data_args, train_args) -> dict[str, Any]:
    """``train`` with three or more classes; returns each pair's training summary by pair label."""
    from ..training import train_pairs

    if train_args.resume_from_checkpoint not in (None, False):
        raise ValueError("--resume_from_checkpoint resumes one adapter's training; with three or more classes every "
                         "pair trains on its own (<output_dir>/training/<pair>), and resuming them is not supported. "
                         "Train again into a new --output_dir, or train an interrupted pair alone: --classes with its "
                         "two classes.")
    setup(run_args)
    feature = parse_feature(data_args.classes)
    pairs = parse_class_pairs(data_args.pairs, feature) if data_args.pairs else pairs_of_classes(feature)
    base, tokenizer = load_base(model_args)
    data = mine_each_pair(data_args, tokenizer, base, feature, pairs)
    out = train_args.output_dir
    training = train_pairs(base, feature, {pair: data[pair].pairs for pair in pairs},
                           replace(train_args, output_dir=os.path.join(out, "training")), tokenizer=tokenizer,
                           config=gradiend_config(base, model_args, feature, init_seed=train_args.seed),
                           restarts=run_args.restarts)
    summaries = {pair: result.training_summary for pair, result in training.results.items()}
    save_pair_adapters(training.model, os.path.join(out, "adapter"), feature, training.adapters, summaries)
    for pair, result in training.results.items():
        folder = pair_folder(out, result.adapter_name)
        save_outputs(folder, "training_history", list(result.log_history))
        if run_args.plots:
            from ..plotting import plot_convergence

            plot_convergence(list(result.log_history), os.path.join(folder, "plots", "convergence.png"),
                             title=f"pair {pair_label(pair)}")
        logger.info("Pair %s: %s", pair_label(pair), training_line(result.training_summary))
    evaluate_each_pair(training.model, tokenizer, data, training.adapters, out, run_args, summaries)
    return {pair_label(pair): summary for pair, summary in summaries.items()}


def _feature_of(index: PairIndex, data_args, folder: str) -> Feature:
    """The index's feature, with the words of ``--classes`` when it names the same classes (the index's without
    ``--classes``)."""
    if data_args.classes is None:
        return index.feature()
    given = parse_class_words(data_args.classes)
    if set(given) != set(index.classes):
        spec = ",".join(f"{name}:{'|'.join(words)}" for name, words in index.classes.items())
        raise ValueError(f"--classes names {sorted(given)}, but the pair adapters in {folder!r} were trained for "
                         f"{sorted(index.classes)}. Pass --classes '{spec}' (other words of the same classes are "
                         "fine), or leave --classes out.")
    return Feature(classes={name: given[name] for name in index.classes}, pair=index.entries[0].pair, name=index.name)


def _load(run_args, model_args, data_args, out: str):
    """The base model with the chosen pairs' adapters (``--pairs``, in either order of each pair's classes)."""
    folder = adapter_folder(run_args, out)
    base, tokenizer = load_base(model_args)
    wanted = None
    if data_args.pairs:
        from ..pair_adapters import read_pair_index

        index = read_pair_index(folder)
        by_classes = {frozenset(entry.pair): entry.pair for entry in index.entries}
        asked = parse_class_pairs(data_args.pairs, index.feature())
        missing = [pair_label(pair) for pair in asked if frozenset(pair) not in by_classes]
        if missing:
            raise ValueError(f"--pairs asks for {missing}, which {folder!r} does not hold; it holds "
                             f"{[pair_label(entry.pair) for entry in index.entries]}.")
        wanted = [by_classes[frozenset(pair)] for pair in asked]
    model, index = load_pair_adapters(base, folder, pairs=wanted)
    return model, tokenizer, index, _feature_of(index, data_args, folder)


def evaluate(run_args, model_args, data_args, output) -> Any:
    """``evaluate`` on a pairs output: every pair's encoder and both matrices, as ``train`` writes them."""
    setup(run_args)
    model, tokenizer, index, feature = _load(run_args, model_args, data_args, output.output_dir)
    data = mine_each_pair(data_args, tokenizer, model, feature, [entry.pair for entry in index.entries])
    return evaluate_each_pair(model, tokenizer, data, index.adapters, output.output_dir, run_args)


def _policies_for(pair: tuple[str, str], spec: str) -> str:
    """The policies of ``--policies`` that apply to ``pair``: those naming no class, and those naming one of its two."""
    policies = [p.strip() for p in spec.split(",") if p.strip()]
    return ",".join(p for p in policies if ":" not in p or p.split(":", 1)[1].strip() in pair)


def rewrite_each_pair(run_args, model_args, data_args, output, rewrite_args) -> dict[str, list]:
    """``rewrite`` on a pairs output: the search per pair (its results and plots in ``pairs/<adapter>/``); returns
    each pair's table by pair label. ``--merge_policy`` needs one pair (``--pairs A-B``)."""
    setup(run_args)
    model, tokenizer, index, feature = _load(run_args, model_args, data_args, output.output_dir)
    if rewrite_args.merge_policy and len(index.entries) != 1:
        example = pair_label(index.entries[0].pair)
        raise ValueError(f"--merge_policy saves one rewritten model, and {len(index.entries)} pairs are loaded: choose "
                         f"the pair whose rewrite to merge with --pairs, e.g. --pairs {example}.")
    named = {p.split(":", 1)[1].strip() for p in rewrite_args.policies.split(",") if ":" in p}
    unknown = sorted(named - {c for entry in index.entries for c in entry.pair})
    if unknown:
        raise ValueError(f"--policies names {unknown}, which no loaded pair has "
                         f"({[pair_label(entry.pair) for entry in index.entries]}).")
    tables, results = {}, {}
    for entry in index.entries:
        policies = _policies_for(entry.pair, rewrite_args.policies)
        if not policies:
            logger.info("Pair %s: no policy of %r applies to it.", pair_label(entry.pair), rewrite_args.policies)
            continue
        data = mine(data_args, tokenizer, model, feature=pair_feature(feature, entry.pair))
        model.set_adapter(entry.adapter_name)
        results, table = rewrite(model, tokenizer, data, pair_folder(output.output_dir, entry.adapter_name),
                                 replace(rewrite_args, policies=policies), run_args)
        print(f"pair {pair_label(entry.pair)} (adapter {entry.adapter_name}):")
        print(format_table(table))
        tables[pair_label(entry.pair)] = table
    maybe_merge(model, tokenizer, results, rewrite_args, output.output_dir)
    return tables
