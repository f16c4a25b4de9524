"""Training one GRADIEND adapter per pair of classes of a feature, all in one `peft.PeftModel`.

A feature of three or more classes is learned pair by pair (`gradiend_peft.data.class_pairs`): each pair gets its
own adapter, trained on its own rows by a `GradiendTrainer` (which trains the model's *active* adapter), with the
pair's first class labelled +1. peft holds the adapters side by side on one base model, so one model answers for
every pair (`gradiend_peft.evaluation.class_pairs` compares them; `gradiend_peft.pair_adapters` saves and loads
them as one folder with an index).

```python
from gradiend_peft.data import Feature, mine_pairs
from gradiend_peft.data.class_pairs import pairs_of_classes, pair_feature
from gradiend_peft.training import GradiendTrainingArguments, train_pairs

feature = Feature(classes={"A": [...], "B": [...], "C": [...]}, pair=("A", "B"))
rows = {pair: mine_pairs(texts, pair_feature(feature, pair)) for pair in pairs_of_classes(feature)}
training = train_pairs(base_model, feature, rows, GradiendTrainingArguments(output_dir="out"),
                       tokenizer=tokenizer, config=GradiendConfig(target_modules="all-linear", init_seed=0))
training.model                        # one PeftModel, one adapter per pair
training.results[("A", "C")].training_summary
```
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..data.class_pairs import pair_adapter_names, pairs_of_classes
from ..data.feature import Feature
from ..tuner.config import GradiendConfig
from ..tuner.model import GradiendModel
from .arguments import GradiendTrainingArguments

__all__ = ["PairResult", "PairTraining", "train_pairs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairResult:
    """The training of one pair's adapter.

    Attributes:
        pair (`tuple[str, str]`): The pair; its rows label ``pair[0]`` +1 and ``pair[1]`` -1.
        adapter_name (`str`): The adapter's name in the model (also its folder when saved).
        class_signs (`dict[str, float]`): The sign each class's gradients encode to, as training left them.
        training_summary (`dict`): The trainer's verdict (``trainer.training_summary``: convergence, validation
            correlation, class means, best step; with restarts, the attempts).
        log_history (`tuple[dict, ...]`): The trainer's log (``trainer.state.log_history``).
    """

    pair: tuple[str, str]
    adapter_name: str
    class_signs: dict[str, float]
    training_summary: dict[str, Any]
    log_history: tuple[dict[str, Any], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class PairTraining:
    """What `train_pairs` made.

    Attributes:
        model (`peft.PeftModel`): The model holding one adapter per pair (the last pair's adapter is active).
        feature (`Feature`): The feature.
        results (`dict[tuple[str, str], PairResult]`): One result per pair, in training order.
    """

    model: Any
    feature: Feature
    results: dict[tuple[str, str], PairResult]

    @property
    def adapters(self) -> dict[tuple[str, str], str]:
        """Pair -> adapter name."""
        return {pair: result.adapter_name for pair, result in self.results.items()}


def _pair_config(template: GradiendConfig, pair: tuple[str, str], index: int) -> GradiendConfig:
    """``template`` for one pair: its classes (``pair[0]`` +1, replacing the template's), and ``init_seed + index``
    so that pairs do not start from the same random adapter (which would make their decoder directions look alike
    before any training)."""
    if template.target_shapes is not None or template.kept_entries is not None:
        raise ValueError("config is an injected adapter's configuration (it records target_shapes or kept_entries); "
                         "pass a new GradiendConfig(...) as the template of the pairs' adapters.")
    config = copy.deepcopy(template)
    config.feature_classes = list(pair)
    config.class_signs = {pair[0]: 1.0, pair[1]: -1.0}
    if template.init_seed is not None:
        config.init_seed = template.init_seed + index
    return config


def _check_rows(rows_by_pair: Mapping[Any, Any]) -> None:
    for pair, rows in rows_by_pair.items():
        keys = list(rows.keys()) if hasattr(rows, "keys") else None
        if keys is None or "train" not in keys:
            raise ValueError(f"rows_by_pair[{pair!r}] must map splits to rows with at least 'train' (and "
                             f"'validation' for evaluation during training), e.g. mine_pairs(...); got "
                             f"{type(rows).__name__}{f' with {keys}' if keys is not None else ''}.")


def train_pairs(
    model: Any,
    feature: Feature,
    rows_by_pair: Mapping[Sequence[str], Any],
    args: GradiendTrainingArguments,
    *,
    tokenizer: Any,
    config: GradiendConfig,
    restarts: int = 1,
    callbacks: Optional[list] = None,
) -> PairTraining:
    """Trains one GRADIEND adapter per pair of ``feature``'s classes, each on its own rows, in one `peft.PeftModel`.

    Pair ``i`` (in the order of ``rows_by_pair``) gets the adapter `pair_adapter_names` names (``"A-vs-B"``), made
    from ``config`` with ``feature_classes=[first, second]``, ``class_signs={first: +1, second: -1}`` and, when
    ``config.init_seed`` is set, ``init_seed + i``. It is made active and trained by a `GradiendTrainer` (so only
    it learns) in ``args.output_dir/<adapter name>``; with ``restarts > 1`` by `train_with_restarts`. The adapters of
    the pairs trained before stay as they are.

    Args:
        model (`transformers.PreTrainedModel` or `peft.PeftModel`): A base model (wrapped with
            ``get_peft_model``), or a `PeftModel` around GRADIEND to add the pairs' adapters to (its own adapters are
            kept; their names must differ from the pairs').
        feature (`Feature`): The feature (two or more classes).
        rows_by_pair (`Mapping[tuple[str, str], DatasetDict]`): Each pair's rows (``mine_pairs`` of
            ``pair_feature(feature, pair)``): ``"train"`` and, for evaluation during training, ``"validation"``;
            rows label the pair's first class +1. Its keys are the pairs trained, in order.
        args (`GradiendTrainingArguments`): The training arguments of every pair (``output_dir`` is the parent of the
            pairs' folders).
        tokenizer: The base model's tokenizer (the trainers' default collator).
        config (`GradiendConfig`): The configuration every pair's adapter starts from (its ``feature_classes`` and
            ``class_signs`` are replaced by each pair's).
        restarts (`int`): Training attempts per pair (seeds ``args.seed``, ``args.seed + 1``, ...); the best is kept.
        callbacks (`list[TrainerCallback]`, *optional*): Callbacks of every pair's trainer.

    Returns:
        `PairTraining`: the model and one `PairResult` per pair.

    Raises:
        `ValueError`: for pairs that are not pairs of ``feature``'s classes, rows without a ``"train"`` split, a
            template config of an injected adapter, or adapter names the model already holds (and whatever the trainer
            refuses, e.g. rows whose classes are not the pair's).
    """
    from peft import get_peft_model

    from .restarts import train_with_restarts
    from .trainer import GradiendTrainer

    pairs = pairs_of_classes(feature, [tuple(pair) for pair in rows_by_pair])
    rows = {tuple(pair): value for pair, value in rows_by_pair.items()}
    _check_rows(rows)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts!r}.")
    names = pair_adapter_names(pairs)
    is_peft = isinstance(getattr(model, "base_model", None), GradiendModel)
    if is_peft:
        taken = sorted(set(names.values()) & set(model.peft_config))
        if taken:
            raise ValueError(f"The model already holds adapters named {taken}; train the pairs on a model without "
                             "them (or delete_adapter them first).")
    results: dict[tuple[str, str], PairResult] = {}
    for index, pair in enumerate(pairs):
        name = names[pair]
        pair_config = _pair_config(config, pair, index)
        if not is_peft:
            model, is_peft = get_peft_model(model, pair_config, adapter_name=name), True
        else:
            model.add_adapter(name, pair_config)
        model.set_adapter(name)
        logger.info("GRADIEND pair %d of %d: %s (adapter %r, %d training rows).", index + 1, len(pairs),
                    " vs ".join(pair), name, len(rows[pair]["train"]))
        pair_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, name))
        splits = list(rows[pair].keys())
        trainer = GradiendTrainer(model=model, args=pair_args, train_dataset=rows[pair]["train"],
                                  eval_dataset=rows[pair]["validation"] if "validation" in splits else None,
                                  processing_class=tokenizer, callbacks=callbacks)
        if restarts > 1:
            train_with_restarts(trainer, num_seeds=restarts)
        else:
            trainer.train()
        signs = model.peft_config[name].class_signs or {}
        results[pair] = PairResult(pair=pair, adapter_name=name, class_signs=dict(signs),
                                   training_summary=dict(trainer.training_summary or {}),
                                   log_history=tuple(dict(log) for log in trainer.state.log_history))
        trainer.accelerator.free_memory()
        del trainer
        gc.collect()
    return PairTraining(model=model, feature=feature, results=results)
