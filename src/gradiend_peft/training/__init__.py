"""Training GRADIEND adapters on transformers' `Trainer` (accelerate underneath).

Typical use::

    from gradiend_peft.training import GradiendTrainer, GradiendTrainingArguments

    trainer = GradiendTrainer(model=peft_model, args=GradiendTrainingArguments(output_dir="out"),
                              train_dataset=pairs["train"], eval_dataset=pairs["validation"],
                              processing_class=tokenizer)
    trainer.train()
    trainer.training_summary["converged"]

See docs/training.md for the loss scale, batching, callbacks, resume, multi-process and mixed precision.
"""

from .arguments import GradiendTrainingArguments
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
from .losses import per_example_reconstruction_loss
from .metrics import encoding_metrics, expected_signs, pearson
from .sampler import ClassGroupedBatchSampler
from .seeds import SeedReport, SeedResult
from .trainer import GradiendTrainer

__all__ = [
    "BestAdapterCallback",
    "ClassGroupedBatchSampler",
    "ConvergenceCallback",
    "ConvergenceVerdict",
    "GradiendTrainer",
    "GradiendTrainingArguments",
    "SeedReport",
    "SeedResult",
    "SignNormalizationCallback",
    "adapter_snapshot",
    "convergence_verdict",
    "encoding_metrics",
    "expected_signs",
    "normalize_sign",
    "pearson",
    "per_example_reconstruction_loss",
    "restore_adapter_snapshot",
]
