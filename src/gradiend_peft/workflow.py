"""The GRADIEND workflow as reusable steps: data, model, training, encoder evaluation, rewrites, report.

The command line (`gradiend_peft.cli`) and the examples are thin layers over these functions. Every step writes
into one output folder:

    <output_dir>/adapter/            the trained adapter (atomic save, with a GRADIEND model card)
    <output_dir>/training/           trainer checkpoints and the training history
    <output_dir>/metrics/*.json      encoder report, one rewrite result per policy, the summary table
    <output_dir>/plots/*.png         convergence, encoder distributions, rewrite grids, probability shifts
    <output_dir>/merged/             the rewritten model, when asked for
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from .atomic import atomic_files, atomic_write_json, save_adapter
from .data import Feature, load_corpus, load_names, mine_neutral, mine_pairs

logger = logging.getLogger(__name__)


def parse_classes(spec: str) -> Feature:
    """Parses ``"M:he,F:she"`` (or ``"SG:he|she|it,PL:they"``) into a two-class `Feature`.

    Raises:
        `ValueError`: naming the malformed part and the expected form.
    """
    classes: dict[str, list[str]] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, sep, words = part.partition(":")
        if not sep or not name.strip() or not words.strip():
            raise ValueError(f"Cannot read class {part!r} of {spec!r}: write CLASS:word|word, e.g. 'M:he,F:she'.")
        classes[name.strip()] = [w.strip() for w in words.split("|") if w.strip()]
    if len(classes) != 2:
        raise ValueError(f"GRADIEND needs exactly two classes, got {len(classes)} in {spec!r} (e.g. 'M:he,F:she').")
    return Feature(classes=classes)


def parse_layers(spec: Optional[str]) -> Optional[list[int]]:
    """Parses ``"20-29"`` or ``"0,2,4"`` (or a mix) into block indices; ``None`` stays ``None``."""
    if not spec:
        return None
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"Cannot read layers {spec!r}: write e.g. '20-29' or '0,2,4'.")
        start, end = int(match.group(1)), int(match.group(2) or match.group(1))
        if end < start:
            raise ValueError(f"Layer range {part!r} runs backwards.")
        layers.extend(range(start, end + 1))
    return sorted(set(layers))


def layer_targets(model: torch.nn.Module, layers: Sequence[int], target_modules: Optional[Sequence[str]] = None) -> str:
    """A regular expression selecting the default (or given) target modules of the given blocks only."""
    from .tuner.constants import TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING as DEFAULTS

    block_index = "|".join(str(i) for i in layers)
    if target_modules:
        names = "|".join(re.escape(t) for t in target_modules)
        return rf".*\.({block_index})\..*({names})"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    default = DEFAULTS.get(model_type)
    if default is None:
        raise ValueError(f"No default target modules for model type {model_type!r}; pass target_modules too.")
    # the defaults read "<prefix>\.\d+\.<modules>": pin the block index
    return default.replace(r"\.\d+\.", rf"\.({block_index})\.", 1)


@dataclass
class FeatureData:
    """Mined rows for one feature: ``pairs`` (train/validation/test), ``neutral`` texts and ``control`` rows."""

    feature: Feature
    pairs: Any
    neutral: list[str]
    control: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    max_length: Optional[int] = None


def he_she_controls(feature: Feature, count: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """Rows whose class is fixed by their context (kinship words and first names), for the rewrite's control guard.

    Only for a feature with ``he`` and ``she`` in two different classes; returns ``[]`` otherwise (with both in
    one class, as in 3SG vs 3PL, the context fixes no class).
    """
    he_class = next((c for c, words in feature.classes.items() if "he" in [w.lower() for w in words]), None)
    she_class = next((c for c, words in feature.classes.items() if "she" in [w.lower() for w in words]), None)
    if he_class is None or she_class is None or he_class == she_class:
        return []
    rng = random.Random(seed)
    female = [n for n in load_names("female", top=200) if n not in set(load_names("male", top=400))]
    male = [n for n in load_names("male", top=200) if n not in set(load_names("female", top=400))]
    templates = ["{} said that [MASK]", "{} told me that [MASK]", "When {} came home, [MASK]", "{} knew that [MASK]"]
    subjects = {
        she_class: ["My mother", "My sister", "My aunt", "The queen", "My grandmother", "His wife"] + female[:40],
        he_class: ["My father", "My brother", "My uncle", "The king", "My grandfather", "Her husband"] + male[:40],
    }
    rows = []
    for cls, word, other_cls, other in ((she_class, "she", he_class, "he"), (he_class, "he", she_class, "she")):
        for _ in range(count // 2):
            text = rng.choice(templates).format(rng.choice(subjects[cls]))
            rows.append({"text": text + " would come.", "factual": word, "alternative": other, "factual_class": cls,
                         "alternative_class": other_cls, "label": 1.0 if cls == feature.pair[0] else -1.0})
    return rows


def drop_unusable_rows(rows: Any, collator: Any, what: str = "rows", max_length: Optional[int] = None) -> Any:
    """Drops, and reports, the rows that ``collator`` refuses (for a causal LM: targets it splits into pieces) and
    rows longer than ``max_length`` tokens (the model's positions).

    Nothing is dropped silently: the count and the first refusal are logged, and a split that loses every row
    raises.
    """
    keep, first_error = [], None
    for index in range(len(rows)):
        try:
            length = collator([rows[index]])["input_ids"].shape[1]
        except ValueError as err:
            first_error = first_error or str(err)
            continue
        if max_length is not None and length > max_length:
            first_error = first_error or f"row {index} is {length} tokens, more than the model's {max_length} positions"
            continue
        keep.append(index)
    dropped = len(rows) - len(keep)
    if dropped:
        logger.warning("Dropped %d of %d %s the tokenizer cannot use; the first: %s", dropped, len(rows), what, first_error)
        if not keep:
            raise ValueError(f"The tokenizer can use none of the {what}: {first_error}")
        rows = rows.select(keep) if hasattr(rows, "select") else [rows[i] for i in keep]
    return rows


def prepare_feature_data(feature: Feature, *, corpus: str = "english", text_file: Optional[str] = None,
                         min_context_words: int = 5, max_rows_per_class: Optional[int] = None, max_test_rows: int = 200,
                         neutral_rows: int = 200, control_rows: int = 40, seed: int = 0,
                         collator: Any = None, max_length: Optional[int] = None) -> FeatureData:
    """Mines training rows, neutral texts and control rows for ``feature`` from a corpus or a text file.

    With a ``collator``, rows it refuses (a causal-LM tokenizer splitting a target, e.g. a capitalised "He" at the
    start of a sentence) are dropped and reported (`drop_unusable_rows`).
    """
    texts: Any = text_file if text_file else load_corpus(corpus)
    pairs = mine_pairs(texts, feature, seed=seed, min_context_words=min_context_words,
                       max_rows_per_class=max_rows_per_class)
    if collator is not None:
        for split in list(pairs):
            pairs[split] = drop_unusable_rows(pairs[split], collator, f"{split} rows", max_length)
    if len(pairs["test"]) > max_test_rows:
        pairs["test"] = pairs["test"].shuffle(seed=seed).select(range(max_test_rows))
    if len(pairs["validation"]) > max_test_rows:
        pairs["validation"] = pairs["validation"].shuffle(seed=seed).select(range(max_test_rows))
    neutral = mine_neutral(texts, feature, exclude_words=["him", "his", "her", "hers", "herself", "himself"])
    neutral = neutral.shuffle(seed=seed)
    if max_length is not None:  # words are at least one token: a cheap bound keeps long texts out
        neutral = neutral.filter(lambda row: len(row["text"].split()) * 2 < max_length)
    neutral_texts = [row["text"] for row in neutral.select(range(min(neutral_rows, len(neutral))))]
    counts = {split: len(pairs[split]) for split in pairs}
    logger.info("Mined %s rows and %d neutral texts.", counts, len(neutral_texts))
    controls = he_she_controls(feature, control_rows, seed)
    if collator is not None and controls:
        controls = drop_unusable_rows(controls, collator, "control rows", max_length)
    return FeatureData(feature, pairs, neutral_texts, controls, counts, max_length)


def summary_row(name: str, metrics: Any, classes: Sequence[str], words: dict[str, str]) -> dict[str, Any]:
    """One line of the before/after table from a rewrite candidate's metrics: each class's mean probability over all
    rows, the mean per-row gap, each class's probability on the other class's rows (what a strengthen policy raises),
    the control accuracy and the LMS."""
    a, b = classes
    return {
        "model": name,
        f"P({words[a]})": metrics.class_probs[a],
        f"P({words[b]})": metrics.class_probs[b],
        f"|P({words[a]})-P({words[b]})|": metrics.mean_abs_gap,
        f"P({words[a]}|{words[b]} rows)": metrics.probs_by_class[b][a],
        f"P({words[b]}|{words[a]} rows)": metrics.probs_by_class[a][b],
        "control_acc": metrics.control_accuracy,
        "LMS": metrics.lms,
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (numbers with 4 decimals)."""
    if not rows:
        return ""
    headers = list(dict.fromkeys(key for row in rows for key in row))  # every column, in order of appearance

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([line, "-" * len(line), *body])


def save_outputs(folder: str, name: str, payload: Any) -> str:
    """Writes a JSON payload atomically into ``<folder>/metrics/<name>.json``."""
    path = os.path.join(folder, "metrics", f"{name}.json")
    atomic_write_json(path, payload)
    return path


def save_merged(model: Any, tokenizer: Any, folder: str, feature_factor: float, lr: float) -> str:
    """Merges ``lr * d(feature_factor)`` into a copy-free unload of ``model`` and saves it atomically to ``folder``.

    The PEFT model is consumed (its layers are unloaded); reload the base model to continue.
    """
    merged = model.merge_and_unload(feature_factor=feature_factor, lr=lr)
    with atomic_files(folder) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


__all__ = [
    "FeatureData",
    "drop_unusable_rows",
    "format_table",
    "he_she_controls",
    "layer_targets",
    "parse_classes",
    "parse_layers",
    "prepare_feature_data",
    "save_adapter",
    "save_merged",
    "save_outputs",
    "summary_row",
]
