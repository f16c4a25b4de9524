"""The steps the commands share: parsing classes and layers, loading the base model, attaching the adapter, mining
rows, training, the encoder evaluation, the rewrite search, tables and saved outputs (see `gradiend_peft.cli` for
the output folder's layout)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import torch

from ..atomic import atomic_files, atomic_write_json
from ..saving import save_adapter
from ..data import Feature, load_corpus, mine_neutral, mine_pairs

logger = logging.getLogger(__name__)


def parse_class_words(spec: str) -> dict[str, list[str]]:
    """Parses ``"SG:is,PL:are"`` (or ``"SG:is|was|has,PL:are|were|have"``, or three or more classes, e.g.
    ``"M:der,F:die,N:das"``) into ``{class: words}``.

    Raises:
        `ValueError`: naming the malformed part (or a class given twice) and the expected form.
    """
    classes: dict[str, list[str]] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, sep, words = part.partition(":")
        if not sep or not name.strip() or not words.strip():
            raise ValueError(f"Cannot read class {part!r} of {spec!r}: write CLASS:word|word, e.g. 'SG:is,PL:are'.")
        if name.strip() in classes:
            raise ValueError(f"Class {name.strip()!r} is given twice in {spec!r}; list all its words once: "
                             f"{name.strip()}:word|word.")
        classes[name.strip()] = [w.strip() for w in words.split("|") if w.strip()]
    return classes


def parse_classes(spec: str) -> Feature:
    """Parses ``"SG:is,PL:are"`` (or ``"SG:is|was,PL:are|were"``) into a two-class `Feature`.

    Raises:
        `ValueError`: naming the malformed part and the expected form.
    """
    classes = parse_class_words(spec)
    if len(classes) != 2:
        raise ValueError(f"This needs exactly two classes, got {len(classes)} in {spec!r} (e.g. 'SG:is,PL:are'). "
                         "Three or more classes train one adapter per pair with gradiend-peft train; evaluate and "
                         "rewrite then work on its output.")
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
    """A regular expression selecting the default (or given) target modules of the given blocks only.

    Raises:
        `ValueError`: for blocks the model does not have, naming its block count.
    """
    from ..planning.meta import block_list
    from ..tuner.constants import TRANSFORMERS_MODELS_TO_GRADIEND_TARGET_MODULES_MAPPING as DEFAULTS

    _, blocks = block_list(model)
    missing = sorted(i for i in set(layers) if i >= blocks)
    if blocks and missing:
        raise ValueError(f"--layers: blocks {missing} do not exist: the model has {blocks} blocks (0-{blocks - 1}). "
                         f"Pass blocks in that range, e.g. --layers {max(0, blocks - 2)}-{blocks - 1}.")
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
    search: Optional[list[dict[str, Any]]] = None
    """The rows the ``debias`` policy searches on, where a study supplies them (`StudyRows.search_rows`)."""


@dataclass(frozen=True)
class StudyRows:
    """What a study adds to the general steps; every field is optional, and the general commands (``train``,
    ``evaluate``, ``rewrite``) pass none, so they treat every feature alike. The ``demo`` passes the bias study's
    (`gradiend_peft.bias.debias`).

    Attributes:
        training_rows: ``(name, feature, seed=)`` -> a train/validation/test `datasets.DatasetDict`, for a
            ``--training_rows`` other than ``corpus``.
        exclude_words: ``feature`` -> words neutral text leaves out beside the feature's own.
        control_rows: ``(feature, count, seed=)`` -> rows whose context decides the class (the control guard).
        search_rows: ``feature`` -> the rows the ``debias`` policy searches on (``None``: the held-out mined rows).
    """

    training_rows: Optional[Callable[..., Any]] = None
    exclude_words: Optional[Callable[[Feature], Sequence[str]]] = None
    control_rows: Optional[Callable[..., list]] = None
    search_rows: Optional[Callable[[Feature], Optional[list]]] = None


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
                         neutral_rows: int = 200, n_controls: int = 200, seed: int = 0,
                         collator: Any = None, max_length: Optional[int] = None,
                         training_rows: str = "corpus", study: Optional[StudyRows] = None) -> FeatureData:
    """Training rows (mined from a corpus or a text file, or the ``study``'s rows that ``training_rows`` names),
    neutral texts and, where the ``study`` supplies them, control rows and the ``debias`` search's rows.

    With a ``collator``, rows it refuses (a causal-LM tokenizer splitting a target, e.g. a capitalised "Die" at the
    start of a sentence) are dropped and reported (`drop_unusable_rows`).
    """
    texts: Any = text_file if text_file else load_corpus(corpus)
    if training_rows == "corpus":
        pairs = mine_pairs(texts, feature, seed=seed, min_context_words=min_context_words,
                           max_rows_per_class=max_rows_per_class)
    elif study is not None and study.training_rows is not None:
        pairs = study.training_rows(training_rows, feature, seed=seed)
    else:
        raise ValueError(f"training_rows must be 'corpus' here (rows mined from --corpus or --text_file), got "
                         f"{training_rows!r}; the demo takes its study's rows.")
    if collator is not None:
        for split in list(pairs):
            pairs[split] = drop_unusable_rows(pairs[split], collator, f"{split} rows", max_length)
    if len(pairs["test"]) > max_test_rows:
        pairs["test"] = pairs["test"].shuffle(seed=seed).select(range(max_test_rows))
    if len(pairs["validation"]) > max_test_rows:
        pairs["validation"] = pairs["validation"].shuffle(seed=seed).select(range(max_test_rows))
    exclude = list(study.exclude_words(feature)) if study is not None and study.exclude_words is not None else []
    neutral = mine_neutral(texts, feature, exclude_words=exclude)  # no feature word, nor the study's other forms
    neutral = neutral.shuffle(seed=seed)
    if max_length is not None:  # words are at least one token: a cheap bound keeps long texts out
        neutral = neutral.filter(lambda row: len(row["text"].split()) * 2 < max_length)
    neutral_texts = [row["text"] for row in neutral.select(range(min(neutral_rows, len(neutral))))]
    counts = {split: len(pairs[split]) for split in pairs}
    logger.info("Mined %s rows and %d neutral texts.", counts, len(neutral_texts))
    controls: list[dict[str, Any]] = []
    if study is not None and study.control_rows is not None and n_controls:
        controls = list(study.control_rows(feature, n_controls, seed=seed))
    if collator is not None and controls:
        controls = drop_unusable_rows(controls, collator, "control rows", max_length)
    search = study.search_rows(feature) if study is not None and study.search_rows is not None else None
    return FeatureData(feature, pairs, neutral_texts, controls, counts, max_length, search)


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


def format_safe_name(name: str) -> str:
    """``name`` as a file-name part: letters, digits, ``.``, ``-`` and ``_``, other runs replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def save_outputs(folder: str, name: str, payload: Any) -> str:
    """Writes a JSON payload atomically into ``<folder>/metrics/<name>.json``."""
    path = os.path.join(folder, "metrics", f"{name}.json")
    atomic_write_json(path, payload)
    return path


MERGED_MODEL_FILES = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|preprocessor_config"
    r"|processor_config|chat_template)\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
    r"|vocab\.(json|txt)|merges\.txt|chat_template\.jinja|(tokenizer|spiece|sentencepiece\.bpe)\.model")
"""The files transformers' ``save_pretrained`` of a model and its tokenizer write: what an interrupted commit of
`save_merged` may name (besides the files the new save writes)."""


def save_merged(model: Any, tokenizer: Any, folder: str, feature_factor: float, lr: float,
                adapter_name: Optional[str] = None) -> str:
    """Merges ``lr * d(feature_factor)`` (of ``adapter_name``, default the active adapter) into a copy-free unload of
    ``model`` and saves it atomically to ``folder``.

    The PEFT model is consumed (its layers are unloaded); reload the base model to continue.
    """
    names = {"adapter_names": [adapter_name]} if adapter_name else {}
    merged = model.merge_and_unload(feature_factor=feature_factor, lr=lr, **names)
    with atomic_files(folder, MERGED_MODEL_FILES.fullmatch) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def setup(run) -> None:
    if run.threads:
        torch.set_num_threads(run.threads)


def load_base(model_args) -> tuple[torch.nn.Module, Any]:
    """Loads the base model and tokenizer (embedded names are converted once and cached)."""
    from ..embedded_models import load_model_and_tokenizer

    if model_args.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {model_args.dtype!r}.")
    return load_model_and_tokenizer(model_args.model, dtype=_DTYPES[model_args.dtype])


def gradiend_config(model: torch.nn.Module, model_args, feature, init_seed: Optional[int] = None) -> Any:
    """The `GradiendConfig` the model arguments describe (initialised from ``init_seed``: runs are reproducible)."""
    from ..tuner.config import GradiendConfig

    layers = parse_layers(model_args.layers)
    targets: Any = model_args.target_modules
    if layers is not None:
        targets = layer_targets(model, layers, model_args.target_modules)
    return GradiendConfig(
        target_modules=targets,
        include_embeddings=model_args.include_embeddings,
        latent_dim=model_args.latent_dim,
        source=model_args.source,
        target=model_args.target,
        feature_classes=list(feature.pair),
        init_seed=init_seed,
    )


def mine(data_args, tokenizer, peft_model, feature: Optional[Feature] = None,
         study: Optional[StudyRows] = None) -> FeatureData:
    """Mines the feature's rows (``--classes``, or ``feature``), neutral texts and the ``study``'s rows (keeping those
    the tokenizer and model can use); ``peft_model`` may also be the base model (its objective is then inferred)."""
    from ..data import collator_for
    from ..tuner.constants import infer_objective

    config = (peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model).config
    max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    adapters = getattr(peft_model, "peft_config", None)
    objective = adapters[peft_model.active_adapter].objective if adapters else infer_objective(peft_model)
    return prepare_feature_data(
        parse_classes(data_args.classes) if feature is None else feature, corpus=data_args.corpus,
        text_file=data_args.text_file,
        min_context_words=data_args.min_context_words, max_rows_per_class=data_args.max_rows_per_class,
        max_test_rows=data_args.max_test_rows, neutral_rows=data_args.neutral_rows,
        n_controls=data_args.control_rows, seed=data_args.mining_seed, collator=collator_for(tokenizer, objective),
        max_length=max_length, training_rows=data_args.training_rows, study=study,
    )


def train(peft_model, tokenizer, data: FeatureData, train_args, run, adapter_name: Optional[str] = None) -> dict[str, Any]:
    """Trains the active adapter, saves it (``adapter_name``: that adapter only) to ``<output_dir>/adapter`` and the
    convergence plot; returns the summary."""
    from ..training import GradiendTrainer

    out = train_args.output_dir
    args = replace(train_args, output_dir=os.path.join(out, "training"))
    trainer = GradiendTrainer(model=peft_model, args=args, train_dataset=data.pairs["train"],
                              eval_dataset=data.pairs["validation"], processing_class=tokenizer)
    if run.restarts > 1:
        from ..training import train_with_restarts

        train_with_restarts(trainer, num_seeds=run.restarts, resume_from_checkpoint=train_args.resume_from_checkpoint)
    else:
        trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    selected = {"selected_adapters": [adapter_name]} if adapter_name else {}
    save_adapter(peft_model, os.path.join(out, "adapter"), training_summary=trainer.training_summary, **selected)
    save_outputs(out, "training_history", trainer.state.log_history)
    if run.plots:
        from ..plotting import plot_convergence

        plot_convergence(trainer.state.log_history, os.path.join(out, "plots", "convergence.png"))
    return dict(trainer.training_summary or {})


def evaluate(peft_model, tokenizer, data: FeatureData, out: str, run) -> Any:
    """Evaluates the encoder on the test rows (and neutral text); saves the report and its plot."""
    from ..evaluation import evaluate_encoder

    report = evaluate_encoder(peft_model, data.pairs["test"], tokenizer=tokenizer, neutral=data.neutral)
    report.save_json(os.path.join(out, "metrics", "encoder.json"))
    if run.plots:
        from ..plotting import plot_encoder_distributions

        plot_encoder_distributions(report, os.path.join(out, "plots", "encoder.png"))
    logger.info("Encoder on held-out rows:\n%s", report.summary())
    return report


def rewrite(peft_model, tokenizer, data: FeatureData, out: str, rewrite_args, run) -> tuple[dict[str, Any], list]:
    """Runs the rewrite search for every policy; saves results and plots; returns them and the summary table.

    The ``debias`` policy searches on the study's rows where ``data`` has them (`FeatureData.search`, the demo's);
    every other policy, and ``debias`` without them, on the held-out mined rows."""
    from ..evaluation import search_rewrite

    classes = list(data.feature.pair)
    words = {c: "/".join(data.feature.classes[c]) for c in classes}
    results: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    measurements: dict[str, dict] = {}  # per row set: candidates measured for one policy are not measured again
    for policy in [p.strip() for p in rewrite_args.policies.split(",") if p.strip()]:
        # debiasing balances rows whose context does not decide the class (the study's search rows);
        # the other policies act on the held-out mined rows
        neutral_rows = data.search if policy == "debias" else None
        rows_kind = "neutral-context" if neutral_rows is not None else "test"
        result = search_rewrite(
            peft_model, neutral_rows if neutral_rows is not None else data.pairs["test"], data.neutral,
            tokenizer=tokenizer, policy=policy, control=data.control or None, lms_floor=rewrite_args.lms_floor,
            control_floor=rewrite_args.control_floor, lrs=rewrite_args.lrs,
            feature_factors=rewrite_args.feature_factors, max_length=data.max_length,
            refine_rounds=rewrite_args.refine_rounds, measurements=measurements.setdefault(rows_kind, {}),
        )
        results[policy] = result
        result.save_json(os.path.join(out, "metrics", f"rewrite_{format_safe_name(policy)}.json"))
        if not any(row["model"] == f"base ({rows_kind} rows)" for row in table):
            table.append(summary_row(f"base ({rows_kind} rows)", result.base.metrics, classes, words))
        if result.best is None:
            logger.warning("Policy %s: no candidate passed the guards; nothing to apply.", policy)
            table.append({"model": f"{policy} (none)"})
        else:
            row = summary_row(policy, result.best.metrics, classes, words)
            row["ff"], row["lr"] = f"{result.best.metrics.feature_factor:+g}", f"{result.best.metrics.lr:.3g}"
            table.append(row)
        if run.plots:
            from ..plotting import plot_probability_shifts, plot_rewrite_grid

            plot_rewrite_grid(result, os.path.join(out, "plots", f"rewrite_{format_safe_name(policy)}.png"))
            if result.best is not None:
                plot_probability_shifts(result, os.path.join(out, "plots", f"shifts_{format_safe_name(policy)}.png"))
    save_outputs(out, "summary", table)
    return results, table


def attach(base, model_args, feature, seed: int) -> Any:
    from peft import get_peft_model

    return get_peft_model(base, gradiend_config(base, model_args, feature, init_seed=seed))


def load_adapter(base, run, out: str) -> Any:
    from ..loading import load_gradiend_model

    folder = run.adapter or os.path.join(out, "adapter")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No adapter at {folder!r}: train one first (gradiend-peft train) or pass --adapter.")
    return load_gradiend_model(base, folder)


def maybe_merge(peft_model, tokenizer, results: dict[str, Any], rewrite_args, out: str) -> Optional[str]:
    if not rewrite_args.merge_policy:
        return None
    result = results.get(rewrite_args.merge_policy)
    if result is None or result.best is None:
        raise ValueError(f"--merge_policy {rewrite_args.merge_policy!r} has no chosen rewrite to merge.")
    return save_merged(peft_model, tokenizer, os.path.join(out, "merged"), **result.merge_kwargs())


def fast_mode(data_args, train_args, rewrite_args) -> tuple:
    """The demo's fast mode: a handful of steps and rows (a smoke test of the whole workflow)."""
    data_args = replace(data_args, max_rows_per_class=60, max_test_rows=16, neutral_rows=12, control_rows=8)
    train_args = replace(train_args, max_steps=4, rows_per_gradient=4, per_device_train_batch_size=None,
                         per_device_eval_batch_size=None, eval_steps=2, save_steps=2, logging_steps=1)
    rewrite_args = replace(rewrite_args, lrs=[0.01, 0.1, 1.0], feature_factors=[0.0], refine_rounds=1)
    return data_args, train_args, rewrite_args


def training_line(summary: dict[str, Any]) -> str:
    """The trainer's verdict in one line (the whole summary is in the adapter's config and metrics/)."""
    # the trainer keys its means by the class of the gradient the encoder read (class_signs), not the row's word
    means = ", ".join(f"{c} {m:+.2f}" for c, m in (summary.get("class_means") or {}).items())
    verdict = "converged" if summary.get("converged") else f"did not converge ({'; '.join(summary.get('reasons', []))})"
    return (f"{verdict}; best step {summary.get('best_step')} of {summary.get('global_step')}, validation "
            f"r = {summary.get('correlation', float('nan')):+.3f}, mean encoding of each class's gradients {means}, "
            f"seed {summary.get('seed')}")
