"""Training GRADIEND adapters on transformers' `Trainer` (accelerate underneath).

Typical use::

    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    trainer = GradiendTrainer(model=peft_model, args=GradiendTrainingArguments(output_dir="out"),
                              train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer)
    trainer.train()                      # trains once
    trainer.training_summary["converged"]

``train_with_restarts(trainer, num_seeds=3)`` tries several seeds and keeps the best attempt. ``train_pairs(model,
feature, rows_by_pair, args, tokenizer=..., config=...)`` trains one adapter per pair of classes of a feature of three
or more classes, all in one PeftModel. See docs/training.md
for the loss scale, batching, callbacks, resume, several processes and mixed precision.
"""

from .arguments import GradiendTrainingArguments
from .class_pairs import PairResult, PairTraining, train_pairs
from .callbacks import (
    BestAdapterCallback,
    ConvergenceCallback,
    ConvergenceVerdict,
    SignNormalizationCallback,
    adapter_snapshot,
    convergence_verdict,
    normalize_sign,
    restore_adapter_snapshot,
)
from .restarts import SeedReport, SeedResult, train_with_restarts
from .sampler import ClassGroupedBatchSampler
from .trainer import GradiendTrainer

__all__ = [
    "BestAdapterCallback",
    "ClassGroupedBatchSampler",
    "ConvergenceCallback",
    "ConvergenceVerdict",
    "GradiendTrainer",
    "GradiendTrainingArguments",
    "PairResult",
    "PairTraining",
    "SeedReport",
    "SeedResult",
    "SignNormalizationCallback",
    "adapter_snapshot",
    "convergence_verdict",
    "normalize_sign",
    "restore_adapter_snapshot",
    "train_pairs",
    "train_with_restarts",
]
