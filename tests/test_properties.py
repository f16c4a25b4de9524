"""Property-based tests (hypothesis) of the config validation and of merge/unmerge."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.tuner.constants import ACTIVATIONS, GRADIENT_KINDS

from tiny import tiny_llama

_ORIGINAL = {n: p.detach().clone() for n, p in tiny_llama().named_parameters()}
EPS32 = torch.finfo(torch.float32).eps

finite = st.floats(min_value=-5, max_value=5, allow_nan=False, allow_infinity=False)
operation = st.one_of(
    st.tuples(st.just("merge"), finite, finite, st.floats(min_value=-50, max_value=50)),
    st.tuples(st.just("unmerge")),
    st.tuples(st.just("prune"), st.floats(min_value=0.3, max_value=0.9)),
    st.tuples(st.just("reset"), st.integers(0, 3)),
    st.tuples(st.just("steer"), finite, st.floats(min_value=-50, max_value=50)),
    st.tuples(st.just("save_load")),
)


def _fresh_model():
    return get_peft_model(tiny_llama(), GradiendConfig(init_seed=0, include_embeddings=True, latent_dim=2))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=8))
def test_any_sequence_of_adapter_operations_keeps_the_base_restorable(tmp_path_factory, steps):
    """merge / unmerge / prune / reset / steer / save+load in any order: each either works or is refused with a
    clear error, and unmerging at the end gives the original base weights back within float32 round-off."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from gradiend_peft import prune_adapter

    model = _fresh_model()
    tuner = model.base_model
    ids = torch.tensor([[3, 5, 7, 9]])
    largest_shift = 0.0
    for op, *values in steps:
        merged = bool(tuner.merged_adapter_names())
        try:
            if op == "merge":
                f1, f2, lr = values
                with torch.no_grad():
                    shift = max(float(layer.delta_weight("default", [f1, f2], lr, tuner.gradient_scale()).abs().max())
                                for layer in tuner.gradiend_layers().values())
                model.merge_adapter(feature_factor=[f1, f2], lr=lr)
                largest_shift = max(largest_shift, shift)
            elif op == "unmerge":
                model.unmerge_adapter()
            elif op == "prune":
                prune_adapter(model, keep=values[0])
            elif op == "reset":
                tuner.reset_adapter(seed=values[0])
            elif op == "steer":
                with tuner.steer(values[0], values[1]):
                    model(input_ids=ids)
            else:
                folder = str(tmp_path_factory.mktemp("adapter"))
                model.save_pretrained(folder)
                set_peft_model_state_dict(model, load_file(f"{folder}/adapter_model.safetensors"))
        except (ValueError, RuntimeError) as err:
            message = str(err)
            assert merged or op == "merge", f"{op} refused on an unmerged adapter: {message}"
            assert "unmerge" in message or "merged" in message, message  # the refusal names the fix
    model.unmerge_adapter()
    assert not tuner.merged_adapter_names()
    for name, param in model.get_base_model().named_parameters():
        key = name.replace(".base_layer", "")
        if key in _ORIGINAL:
            original = _ORIGINAL[key]
            # (w + d) - d in float32: at most one rounding of |w| + |d| per merge
            bound = 4 * EPS32 * (float(original.abs().max()) + largest_shift)
            torch.testing.assert_close(param, original, rtol=0, atol=bound)


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
