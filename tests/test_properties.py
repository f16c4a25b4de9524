"""Property-based tests (hypothesis) of the config validation and of merge/unmerge."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.tuner.constants import ACTIVATIONS, GRADIENT_KINDS

from tiny import tiny_llama

_MODEL = get_peft_model(tiny_llama(), GradiendConfig(init_seed=0, include_embeddings=True, latent_dim=2))
_BASE = {n: p.detach().clone() for n, p in _MODEL.named_parameters() if "base_layer" in n}

finite = st.floats(min_value=-5, max_value=5, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), finite, finite, st.floats(min_value=-50, max_value=50)), min_size=1, max_size=6))
def test_any_merge_unmerge_sequence_returns_the_base_weights(steps):
    model = _MODEL
    for merge, f1, f2, lr in steps:
        if merge:
            model.merge_adapter(feature_factor=[f1, f2], lr=lr)
        else:
            model.unmerge_adapter()
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in _BASE:
            torch.testing.assert_close(param, _BASE[name], rtol=0, atol=1e-4)
            param.data.copy_(_BASE[name])  # remove float drift before the next example


@settings(max_examples=60, deadline=None)
@given(
    latent_dim=st.one_of(st.integers(-3, 8), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)),
    activation=st.one_of(st.sampled_from(ACTIVATIONS), st.text(max_size=8)),
    source=st.one_of(st.sampled_from(GRADIENT_KINDS), st.text(max_size=8)),
    lr=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_config_accepts_exactly_the_valid_values(latent_dim, activation, source, lr):
    valid = (
        isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim > 0
        and activation in ACTIVATIONS and source in GRADIENT_KINDS and (lr is None or math.isfinite(lr))
    )
    try:
        config = GradiendConfig(latent_dim=latent_dim, activation=activation, source=source, lr=lr)
    except ValueError as err:
        assert not valid, f"valid values refused: {err}"
        assert str(err)  # names the problem
    else:
        assert valid, "invalid values accepted"
        assert config.latent_dim == latent_dim
