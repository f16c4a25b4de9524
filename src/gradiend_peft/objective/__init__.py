"""The GRADIEND objective, computed from rows: the base model's gradients, the reconstruction losses (per row group
and per row), row encodings and the encoder metrics.

The same functions compute the objective with the adapter's target modules split over processes (module sharding):
pass ``shard=Shard(group)`` (`gradiend_peft.objective.sharded`, which holds the collective pieces: the all-reduces
of the partial sums over modules); without it nothing collective runs.

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
from .losses import calibrate, per_example_reconstruction_loss, reconstruction_loss
from .metrics import SIGNED_METRICS, encoding_metrics, expected_sign, pearson, sign_accuracy

__all__ = [
    "NonFiniteGradientError",
    "SIGNED_METRICS",
    "batch_gradients",
    "calibrate",
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
