"""Merges, steering and unmerges on float16/bfloat16 base weights: the value that is stored is checked (a sum that
float32 holds can overflow float16 or bfloat16), and merged weights cast to another dtype are never "unmerged" by
a subtraction that can no longer restore them."""

import pytest
import torch
from peft import get_peft_model

from gradiend_peft import GradiendConfig

from tiny import tiny_bert, tiny_llama

LOW = [torch.float16, torch.bfloat16]


def _model(dtype, family=tiny_llama):
    return get_peft_model(family().to(dtype), GradiendConfig(init_seed=0))


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "gradiend" not in n}


def _assert_weights_equal(model, weights):
    for name, param in model.get_base_model().named_parameters():
        if name in weights:
            assert torch.equal(param, weights[name]), name


def _overflow_last_layer(model, dtype):
    """Sets one decoder-bias entry of the last target layer so that ``W + lr * c / s`` (``lr = s``, factor 0) is
    finite in float32 but beyond ``dtype``'s range once rounded; returns the layers in merge order."""
    tuner = model.base_model
    layers = list(tuner.gradiend_layers().values())
    big = torch.finfo(torch.float32).max * 0.999  # finite in float32, above float16's 65504 and bfloat16's 3.39e38
    assert big > torch.finfo(dtype).max and torch.tensor(big, dtype=dtype).isinf()
    with torch.no_grad():
        for layer in layers:
            layer.gradiend_decoder_bias["default"].zero_()
        layers[-1].gradiend_decoder_bias["default"].view(-1)[0] = big
    return layers


@pytest.mark.parametrize("dtype", LOW)
def test_a_merge_beyond_the_weight_dtype_range_is_refused_before_any_layer_is_written(dtype):
    model = _model(dtype)
    tuner = model.base_model
    layers = _overflow_last_layer(model, dtype)
    lr = tuner.gradient_scale()  # the shift is the decoder bias itself
    delta = layers[-1].delta_weight("default", 0.0, lr, tuner.gradient_scale())
    summed = delta + layers[-1].get_base_layer().weight.float()
    assert torch.isfinite(summed).all()  # the float32 sum is finite: only the stored value overflows
    original = _base_weights(model)
    with pytest.raises(ValueError, match=f"NaN or infinite values into a .* {str(dtype)[6:]} weight"):
        model.merge_adapter(feature_factor=0.0, lr=lr)
    _assert_weights_equal(model, original)  # the earlier layers too: every layer is checked first
    assert not tuner.merged_adapter_names()
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.merge_and_unload(feature_factor=0.0, lr=lr)
    _assert_weights_equal(model, original)


def test_a_large_float16_merge_writes_no_infinity():
    model = _model(torch.float16, tiny_bert)
    original = _base_weights(model)
    tuner = model.base_model
    layer = next(iter(tuner.gradiend_layers().values()))
    shifted = layer.delta_weight("default", 1.0, 1e8, tuner.gradient_scale()) + layer.get_base_layer().weight.float()
    assert torch.isfinite(shifted).all() and shifted.abs().max() > 65504  # finite sum, beyond float16
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.merge_adapter(feature_factor=1.0, lr=1e8)
    _assert_weights_equal(model, original)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.merge_and_unload(feature_factor=1.0, lr=1e8)
    _assert_weights_equal(model, original)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("dtype", LOW)
def test_steering_beyond_the_weight_dtype_range_is_refused(dtype, cache):
    model = _model(dtype)
    lr = model.base_model.gradient_scale()
    _overflow_last_layer(model, dtype)
    with model.base_model.steer(0.0, lr, cache=cache), pytest.raises(ValueError, match="NaN or infinite"):
        model(input_ids=torch.tensor([[3, 4, 5]]))


@pytest.mark.parametrize("cast", [torch.float16, torch.bfloat16])
def test_unmerging_after_a_cast_of_the_merged_weights_is_refused(cast):
    model = _model(torch.float32)
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    model.to(cast)
    merged = _base_weights(model)
    with pytest.raises(RuntimeError, match=f"changed dtype after the merge .*float32 -> {str(cast)[6:]}"):
        model.unmerge_adapter()
    _assert_weights_equal(model, merged)  # nothing changed
    assert model.base_model.merged_adapter_names() == ["default"]


def test_casting_merged_weights_there_and_back_is_still_refused():
    model = _model(torch.float32)
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    model.half()
    model.float()  # the dtype is float32 again, but the merged weights were rounded to float16 on the way
    with pytest.raises(RuntimeError, match="float32 -> float16 -> float32"):
        model.unmerge_adapter()


def test_a_cast_of_the_base_model_alone_is_seen_too():
    base = tiny_llama()
    model = get_peft_model(base, GradiendConfig(init_seed=0))
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    base.half()  # the user's own reference to the transformers model
    with pytest.raises(RuntimeError, match="changed dtype after the merge"):
        model.unmerge_adapter()


@pytest.mark.filterwarnings("ignore:Merging adapter")  # some steps are below a half-precision resolution: expected
@pytest.mark.parametrize("start, cast", [(torch.float32, torch.float16), (torch.bfloat16, torch.float32),
                                         (torch.float16, torch.bfloat16)])
def test_a_kept_original_is_restored_exactly_in_the_new_dtype(start, cast):
    model = _model(start)
    original = _base_weights(model)
    model.merge_adapter(feature_factor=1.0, lr=30.0, keep_original=True)  # kept anyway for half-precision bases
    model.to(cast)
    model.unmerge_adapter()
    targets = {f"{n}.base_layer.weight" for n in model.base_model.gradiend_layers()}
    for name, param in model.get_base_model().named_parameters():
        if name in targets:
            assert torch.equal(param, original[name].to(cast)), name  # the original, cast as the model was


def test_a_merge_after_the_cast_unmerges_normally():
    model = _model(torch.float32)
    model.half()
    original = _base_weights(model)
    model.merge_adapter(feature_factor=1.0, lr=30.0)
    model.unmerge_adapter()
    _assert_weights_equal(model, original)
