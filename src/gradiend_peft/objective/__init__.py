"""The GRADIEND objective, computed from rows: the base model's gradients, the reconstruction losses (per row group
and per row), row encodings and the encoder metrics.

`gradiend_peft.objective.sharded` computes the same objective with the adapter's target modules split over processes
(module sharding: partial sums all-reduced).

It sits between the tuner (`gradiend_peft.tuner`: weight-space maths on given gradients) and the training and
evaluation packages, and imports in one direction only: ``tuner <- objective <- training, evaluation``.

```python
from gradiend_peft.objective import encode_rows, reconstruction_loss

loss, latent, n = reconstruction_loss(peft_model.base_model, batch)   # one row group = one GRADIEND sample
h = encode_rows(peft_model.base_model, batch)                        # (B, k): every row on its own
```
"""

from .encoding import encode_group, encode_rows
from .gradients import (
    NonFiniteGradientError,
    batch_gradients,
    check_inputs_fit,
    max_positions,
    per_example_dots,
    per_example_encoder_dots,
    per_row_losses,
)
from .losses import per_example_reconstruction_loss, reconstruction_loss
from .metrics import SIGNED_METRICS, encoding_metrics, expected_sign, pearson, sign_accuracy

__all__ = [
    "NonFiniteGradientError",
    "SIGNED_METRICS",
    "batch_gradients",
    "check_inputs_fit",
    "encode_group",
    "encode_rows",
    "encoding_metrics",
    "expected_sign",
    "max_positions",
    "pearson",
    "per_example_dots",
    "per_example_encoder_dots",
    "per_example_reconstruction_loss",
    "per_row_losses",
    "reconstruction_loss",
    "sign_accuracy",
]
