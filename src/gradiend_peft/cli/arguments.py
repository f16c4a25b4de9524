"""The command line's options: one dataclass per concern (transformers' `HfArgumentParser` turns them into flags,
reads ``--config run.yaml`` files, and writes ``--help``), and `parse_command`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import yaml

logger = logging.getLogger("gradiend_peft")



@dataclass
class ModelArguments:
    """Which base model, and where GRADIEND attaches to it."""

    model: str = field(
        default="smollm2-135m",
        metadata={"help": "An embedded model ('smollm2-135m', 'gemma3-270m'), a Hub id or a local folder."},
    )
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32 or bfloat16."})
    target_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Module names to target (default: every block projection of the model type)."}
    )
    layers: Optional[str] = field(default=None, metadata={"help": "Only these blocks, e.g. '20-29' or '0,2,4'."})
    include_embeddings: bool = field(default=False, metadata={"help": "Also target the input embedding."})
    latent_dim: int = field(default=1, metadata={"help": "GRADIEND latent size."})
    source: str = field(default="alternative", metadata={"help": "Encoder input gradient: factual, alternative, diff."})
    target: str = field(default="diff", metadata={"help": "Decoder target gradient: factual, alternative, diff."})


@dataclass
class DataArguments:
    """The feature and the text it is mined from."""

    classes: Optional[str] = field(
        default=None,
        metadata={"help": "Classes with their words, e.g. 'SG:is,PL:are' or 'M:der,F:die'; three or more (train, "
                          "evaluate, rewrite): one adapter per pair of classes. Required, except by the demo (which "
                          "has its study's) and on pair adapters (whose index has them)."},
    )
    pairs: Optional[str] = field(
        default=None,
        metadata={"help": "With three or more classes: the pairs, e.g. 'A-B,A-C' (default: every pair)."},
    )
    training_rows: str = field(
        default="corpus",
        metadata={"help": "Training rows: corpus (mined from --corpus/--text_file); the demo also takes its study's "
                          "template rows by name (gradiend_peft.bias.debias.template_training_rows)."},
    )
    corpus: str = field(default="english", metadata={"help": "Embedded corpus: english or german."})
    text_file: Optional[str] = field(default=None, metadata={"help": "A text file to mine instead of the corpus."})
    min_context_words: int = field(default=5, metadata={"help": "Words required before the slot."})
    max_rows_per_class: Optional[int] = field(default=None, metadata={"help": "Cap on mined rows per class."})
    max_test_rows: int = field(default=200, metadata={"help": "Cap on validation and test rows."})
    neutral_rows: int = field(default=200, metadata={"help": "Neutral texts for the language-modelling score."})
    control_rows: int = field(
        default=200, metadata={"help": "Rows whose context decides the class, guarding rewrites (where a study supplies "
                                       "them: the demo)."}
    )
    mining_seed: int = field(default=0, metadata={"help": "Seed of mining, splitting and control rows."})


@dataclass
class RewriteArguments:
    """The rewrite search and what to do with its choice."""

    policies: str = field(
        default="balance",
        metadata={"help": "Comma-separated: debias, balance, strengthen:<class>, weaken:<class>, favour:<class>."},
    )
    lms_floor: float = field(default=0.99, metadata={"help": "Keep LMS >= this x base LMS."})
    control_floor: float = field(default=0.95, metadata={"help": "Keep control accuracy >= this x base."})
    lrs: Optional[list[float]] = field(default=None, metadata={
        "help": "Learning-rate grid (default: the reference's, 0.001-100; the demo's 1-300 suits SmolLM2-135M, and the "
                "demo of another model uses the reference's: where edits act depends on the model)."})
    feature_factors: Optional[list[float]] = field(default=None, metadata={"help": "Feature factors (default: policy's)."})
    refine_rounds: int = field(
        default=2, metadata={"help": "Rounds of learning-rate refinement around where the edit acts and fails."}
    )
    merge_policy: Optional[str] = field(
        default=None, metadata={"help": "Save the model rewritten by this policy's choice to <output_dir>/merged."}
    )


@dataclass
class DemoArguments:
    """The demo's specific edit (``demo`` only): the adapters trained beside its first adapter and how their edits
    combine (see `gradiend_peft.bias.debias`)."""

    definitional_steps: int = field(
        default=100, metadata={"help": "Training steps of the adapter on definitional rows, whose directions are projected "
                                      "out of the edits (0: no projection)."})
    attribute_steps: int = field(
        default=100, metadata={"help": "Training steps of the adapter on the study's attribute rows (0: no "
                                       "attribute edit)."})
    attribute_lrs: list[float] = field(
        default_factory=lambda: [100.0, 300.0, 1000.0, 2000.0, 4000.0],
        metadata={"help": "Learning rates of the attribute edit's search (attribute rows of the search split, LMS "
                          "guard)."})


@dataclass
class BiasEvalArguments:
    """Which models the bias benchmarks score (``bias-eval``)."""

    feature_factor: Optional[float] = field(
        default=None, metadata={"help": "With --adapter: the rewrite's feature factor (steered; the base is scored too)."}
    )
    lr: Optional[float] = field(default=None, metadata={"help": "With --adapter: the rewrite's learning rate."})
    rewrite_result: Optional[str] = field(
        default=None, metadata={"help": "With --adapter: a saved rewrite search (metrics/rewrite_<policy>.json) whose "
                                        "chosen feature factor and lr to score."}
    )
    compare_to: Optional[str] = field(
        default=None, metadata={"help": "Another model (embedded name, Hub id or folder) scored beside --model, e.g. "
                                        "the base of a merged folder."}
    )
    domain: str = field(
        default=None, metadata={"help": "Comma-separated bias domains of gradiend_peft.bias.benchmarks.DOMAINS (one "
                                        "table each; default: its first)."}
    )
    benchmarks: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated benchmarks of gradiend_peft.bias.benchmarks.BENCHMARKS. "
                                        "Default: all that measure the domain."}
    )
    max_items: Optional[int] = field(default=None, metadata={"help": "At most this many items per benchmark."})
    batch_size: int = field(default=16, metadata={"help": "Sentences per forward pass."})


@dataclass
class OutputArguments:
    """Where results go (train and demo take it from the training arguments)."""

    output_dir: str = field(default="gradiend-output", metadata={"help": "The folder for everything the run makes."})


@dataclass
class RunArguments:
    """Run-wide switches."""

    adapter: Optional[str] = field(default=None, metadata={"help": "A trained adapter (evaluate/rewrite; default <output_dir>/adapter)."})
    fast: bool = field(default=False, metadata={"help": "Demo only: a few steps and rows, for a quick check."})
    plots: bool = field(default=True, metadata={"help": "Write plots to <output_dir>/plots."})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    restarts: int = field(
        default=1, metadata={"help": "Training attempts with seeds seed, seed+1, ...; the best is kept (train only)."}
    )


@dataclass
class EstimateMemoryArguments:
    """``estimate-memory``: the peak memory per process of training, row encoding and the rewrite search, planned from
    the model's config alone (see `gradiend_peft.planning.estimate_memory`)."""

    model: str = field(
        default="smollm2-135m",
        metadata={"help": "An embedded model ('smollm2-135m': its cached config), a local folder or a Hub id."},
    )
    targets: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Target modules: names, a regular expression or all-linear (default: every block projection)."},
    )
    layers: Optional[str] = field(default=None, metadata={"help": "Only these blocks, e.g. '20-29' or '0,2,4'."})
    include_embeddings: bool = field(default=False, metadata={"help": "Also target the input embedding."})
    latent_dim: int = field(default=1, metadata={"help": "GRADIEND latent size."})
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    adapter_dtype: str = field(
        default="float32",
        metadata={"help": "Adapter storage: float32 (autocast_adapter_dtype=True) or base (the base dtype; trained "
                          "as float32 masters)."},
    )
    rows_per_gradient: int = field(default=32, metadata={"help": "Rows per GRADIEND sample (and per encoding pass)."})
    seq_len: int = field(default=64, metadata={"help": "Tokens per row after padding (the longest row of a group)."})
    processes: int = field(default=1, metadata={"help": "Processes of the module-sharded mode (one process is planned too)."})
    device_memory: Optional[str] = field(
        default=None, metadata={"help": "e.g. 80GB: also report the most blocks and the largest model of this shape "
                                        "that fit, after --overhead and --headroom."},
    )
    overhead: str = field(default="1GB", metadata={"help": "Memory outside the planned tensors (CUDA context, "
                                                           "framework) taken off --device_memory."})
    headroom: float = field(default=0.1, metadata={"help": "Allocator slack: a plan fits if peak x (1 + headroom) "
                                                           "+ overhead <= device_memory."})
    search_rows: int = field(default=600, metadata={"help": "Rows, neutral texts and control rows of the search."})
    search_batch_size: int = field(default=32, metadata={"help": "Texts per forward pass of the search."})
    search_seq_len: Optional[int] = field(default=None, metadata={"help": "Tokens per search text (default seq_len)."})
    json: Optional[str] = field(default=None, metadata={"help": "Also write the plan to this JSON file."})


def _training_arguments_class():
    from ..training import GradiendTrainingArguments

    return GradiendTrainingArguments


COMMANDS = {
    "train": "Mine rows, train a GRADIEND adapter, evaluate its encoder.",
    "evaluate": "Evaluate a trained adapter's encoder on held-out rows.",
    "rewrite": "Search the (feature_factor, lr) rewrite for each policy; optionally save the rewritten model.",
    "demo": "The whole workflow on a real model (SmolLM2-135M by default), with a before/after table.",
    "bias-eval": "The bias benchmarks (gradiend_peft.bias.benchmarks) of a model, an adapter's rewrite or a merged "
                 "folder, with paired statistics of the change.",
    "estimate-memory": "Plan the peak memory per process of training, encoding and the rewrite search.",
}


def _dataclasses_for(command: str) -> tuple:
    """The argument dataclasses of a command, in the order its module's ``run`` function takes them."""
    if command == "estimate-memory":
        return (EstimateMemoryArguments,)
    base = (RunArguments, ModelArguments, DataArguments)
    if command == "train":
        return base + (_training_arguments_class(),)
    if command == "evaluate":
        return base + (OutputArguments,)
    if command == "rewrite":
        return base + (OutputArguments, RewriteArguments)
    if command == "bias-eval":
        return (RunArguments, ModelArguments, OutputArguments, BiasEvalArguments)
    return base + (RewriteArguments, DemoArguments, _training_arguments_class())


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"--config {path!r}: no such file ({os.path.abspath(path)!r}).")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) if path.endswith((".yaml", ".yml")) else json.load(handle)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON (name it .yaml for YAML)"
        detail = " ".join(str(err).split())
        raise ValueError(f"--config {path!r} is not valid {kind}: {detail}") from err
    if not isinstance(data, dict):
        raise ValueError(f"The config file {path!r} must hold a mapping of option names to values.")
    return data


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _kind(annotation: Any) -> tuple[Optional[type], bool, bool]:
    """``(scalar type, is a list of it, may be None)`` of a field annotation; ``(None, ...)`` when the type is
    something else (a union of several types, an enum): such values are left to the parser."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            return None, False, optional
        annotation = rest[0]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and len(args) == 1 and args[0] in _KINDS:
        return args[0], True, optional
    return (annotation if annotation in _KINDS else None), False, optional


def _coerce(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (a YAML string such as ``1e-3`` as a number, a number as a string); raises
    `ValueError` where it is not one."""
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, str):
        from transformers.hf_argparser import string_to_bool

        try:
            return string_to_bool(value)
        except argparse.ArgumentTypeError:
            raise ValueError(value) from None
    if kind in (int, float) and isinstance(value, str):
        number = float(value.strip())  # a ValueError for text
        if kind is float or number.is_integer():
            return number if kind is float else int(number)
    raise ValueError(value)


def _typed_config_values(values: dict[str, Any], classes: Sequence[type], path: str) -> dict[str, Any]:
    """The ``--config`` values, each checked against its option's type (and converted where the file's syntax
    decides the type: ``1e-3`` is a string to YAML, ``layers: 7`` a number).

    Raises:
        `ValueError`: naming the file, the key, what it must be and what it is (a list where a number is expected).
    """
    hints: dict[str, Any] = {}
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    typed = dict(values)
    for key, value in values.items():
        kind, is_list, optional = _kind(hints.get(key))
        if kind is None or (value is None and optional):
            continue
        try:
            if is_list:
                typed[key] = [_coerce(item, kind) for item in (value if isinstance(value, list) else [value])]
            else:
                typed[key] = _coerce(value, kind)
        except ValueError:
            expected = f"a list of {_PLURALS[kind]}" if is_list else _KINDS[kind]
            got = f"the {type(value).__name__} {value!r}" if isinstance(value, (list, dict)) else repr(value)
            raise ValueError(
                f"--config {path!r}: {key} must be {expected}{' (or null)' if optional else ''}, got {got}. "
                f"Write e.g. `{key}: {_example(kind, is_list)}`{' (one value, not a list)' if not is_list else ''}."
            ) from None
    return typed


def _example(kind: type, is_list: bool) -> str:
    one = {int: "10", float: "0.5", bool: "true", str: "text"}[kind]
    return f"[{one}, {one}]" if is_list else one


def _check_merge_policy(parsed: Sequence[Any]) -> None:
    """Refuses a ``--merge_policy`` that is not among ``--policies``, before any search runs."""
    for args in parsed:
        if isinstance(args, RewriteArguments) and args.merge_policy:
            policies = [p.strip() for p in args.policies.split(",") if p.strip()]
            if args.merge_policy.strip() not in policies:
                raise ValueError(
                    f"--merge_policy {args.merge_policy!r} is not among --policies {args.policies!r}: the merged model "
                    "is the choice of a searched policy. Add it to --policies (e.g. --policies "
                    f"{','.join(policies + [args.merge_policy.strip()])}) or merge one of {policies}."
                )


def parse_command(command: str, argv: Sequence[str]) -> tuple:
    """Parses ``argv`` (and ``--config FILE``) into the command's argument dataclasses.

    Raises:
        `ValueError`: for a config file with keys no option has, or a value of the wrong type (a list where a
            number is expected), and for a ``--merge_policy`` not among ``--policies`` (each named, with the fix).
    """
    from transformers import HfArgumentParser

    classes = _dataclasses_for(command)
    parser = HfArgumentParser(classes, prog=f"gradiend-peft {command}", description=COMMANDS[command])
    parser.add_argument("--config", default=None, help="A YAML or JSON file of options; flags given as well win.")
    traceback_help = "Show the whole traceback when the command fails (given without a value)."
    if any(f.name == "debug" for cls in classes for f in fields(cls)):  # transformers' --debug takes values
        parser.description = f"{parser.description} A bare --debug (no value): {traceback_help[:-21].lower()}."
    else:
        parser.add_argument("--debug", action="store_true", help=traceback_help)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = _read_config(known.config)
        valid = {f.name for cls in classes for f in fields(cls) if f.init}
        unknown = sorted(set(values) - valid - {"config"})
        if unknown:
            raise ValueError(
                f"Unknown keys in {known.config}: {unknown}. Check their spelling against `gradiend-peft {command} "
                "--help` (option names without the leading dashes)."
            )
        values = _typed_config_values(values, classes, known.config)
    else:
        values = {}
    if command == "demo":
        from ..bias.debias import DEMO_DEFAULTS

        parser.set_defaults(**DEMO_DEFAULTS)
    parser.set_defaults(**values)
    parsed = parser.parse_args_into_dataclasses(args=list(argv))
    parsed = tuple(p for p in parsed if not isinstance(p, argparse.Namespace))
    for args in parsed:
        if hasattr(args, "resume_from_checkpoint"):
            args.resume_from_checkpoint = _checkpoint_flag(args.resume_from_checkpoint)
    _check_merge_policy(parsed)
    return parsed


def _checkpoint_flag(value: Any) -> Any:
    """``--resume_from_checkpoint`` takes a folder, or true/false (the last checkpoint of output_dir / none)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "none", ""):
        return None
    return value
