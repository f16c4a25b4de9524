"""Projecting one adapter's edit direction off others' (gradiend_peft.editing), checked by hand."""

import math

import pytest
import torch
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.editing import combine_edits, decoder_directions, project_out

from tiny import tiny_llama


def _two_adapters():
    model = get_peft_model(tiny_llama(), GradiendConfig(target_modules=["q_proj", "v_proj"], init_seed=0))
    model.add_adapter("def", GradiendConfig(target_modules=["q_proj", "v_proj"], init_seed=1))
    model.base_model.gradiend_gradient_scale["default"].fill_(2.0)
    model.base_model.gradiend_gradient_scale["def"].fill_(5.0)
    return model


def _flat(directions):
    return torch.cat([directions[m].reshape(-1) for m in sorted(directions)])


def test_the_projected_bias_is_orthogonal_to_the_other_adapters_directions():
    model = _two_adapters()
    before = _flat(decoder_directions(model, "default")["bias"])
    other = decoder_directions(model, "def")
    d, c = _flat(other["weight_0"]), _flat(other["bias"])
    result = project_out(model, "default", against=["def"])
    after = _flat(decoder_directions(model, "default")["bias"])
    # an independent float64 least-squares projection onto span(d, c)
    basis = torch.stack([d, c], dim=1)
    expected = before - basis @ torch.linalg.lstsq(basis, before.unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6 * float(before.abs().max()))  # float32 storage
    for u in (d, c):
        assert abs(float(after @ u)) <= 1e-5 * float(after.norm() * u.norm())
    assert result.basis == ["def:weight_0", "def:bias"]
    cos_d = float(before @ d) / float(before.norm() * d.norm())
    assert result.cosines["bias"][0] == pytest.approx(cos_d, rel=1e-6)
    assert result.kept_norm["bias"] == pytest.approx(float(after.norm() / before.norm()), rel=1e-5)
    assert math.isfinite(result.kept_norm["bias"]) and 0 < result.kept_norm["bias"] <= 1


def test_drop_weight_leaves_the_projected_bias_as_the_whole_edit():
    model = _two_adapters()
    project_out(model, "default", against=["def"], drop_weight=True)
    for layer in model.base_model.gradiend_layers("default").values():
        assert not layer.gradiend_decoder["default"].any()
    base = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" in n}
    bias = decoder_directions(model, "default")["bias"]
    model.base_model.merge_adapter(["default"], feature_factor=1.0, lr=3.0)  # any ff: D is zero
    for module, direction in bias.items():
        weight = model.get_base_model().get_submodule(module).get_base_layer().weight
        expected = base[f"{module}.base_layer.weight"].double() + 3.0 * direction
        torch.testing.assert_close(weight.double(), expected, rtol=0, atol=8 * torch.finfo(torch.float32).eps
                                   * float(expected.abs().max()))


def test_projection_refuses_a_merged_model_and_unknown_components():
    model = _two_adapters()
    with pytest.raises(ValueError, match="no decoder 'weight_3'"):
        project_out(model, "default", against=["def"], components=["weight_3"])
    model.base_model.merge_adapter(["def"], feature_factor=1.0, lr=1.0)
    with pytest.raises(RuntimeError, match="unmerge"):
        project_out(model, "default", against=["def"])


def _weights(model):
    return {m: layer.get_base_layer().weight.detach().clone()
            for m, layer in model.base_model.gradiend_layers("default").items()}


def test_combined_edits_merge_to_the_sum_of_each_edit_merged_alone():
    model = _two_adapters()
    base = _weights(model)
    alone = {}
    for name, (ff, lr) in {"default": (0.0, 3.0), "def": (1.0, 0.5)}.items():
        model.base_model.merge_adapter([name], feature_factor=ff, lr=lr)
        alone[name] = {m: w - base[m] for m, w in _weights(model).items()}
        model.base_model.unmerge_adapter()
    assert combine_edits(model, {"default": (0.0, 3.0), "def": (1.0, 0.5)}, "both") == "both"
    assert model.base_model.gradient_scale("both") == 1.0  # the new adapter has no scale of its own
    model.base_model.merge_adapter(["both"], feature_factor=0.0, lr=1.0)
    merged = _weights(model)
    model.base_model.unmerge_adapter()
    eps = torch.finfo(torch.float32).eps
    for m, w in merged.items():
        expected = base[m] + alone["default"][m] + alone["def"][m]
        assert alone["default"][m].abs().max() > 0 and alone["def"][m].abs().max() > 0
        assert torch.allclose(w, expected, rtol=8 * eps, atol=8 * eps * float(expected.abs().max())), m
    # the decoder weight is zero, so the feature factor does not matter; lr scales the whole sum
    model.base_model.merge_adapter(["both"], feature_factor=5.0, lr=0.5)
    half = _weights(model)
    model.base_model.unmerge_adapter()
    for m, w in half.items():
        expected = base[m] + 0.5 * (alone["default"][m] + alone["def"][m])
        assert torch.allclose(w, expected, rtol=8 * eps, atol=8 * eps * float(expected.abs().max())), m


def test_combining_refuses_names_in_use_other_targets_and_non_finite_edits():
    model = _two_adapters()
    with pytest.raises(ValueError, match="exists already"):
        combine_edits(model, {"default": (0.0, 1.0)}, "def")
    with pytest.raises(ValueError, match="at least one edit"):
        combine_edits(model, {}, "x")
    with pytest.raises(ValueError, match="finite"):
        combine_edits(model, {"default": (0.0, float("nan"))}, "x")
    model.add_adapter("other", GradiendConfig(target_modules=["q_proj"], init_seed=2))
    with pytest.raises(ValueError, match="target different modules"):
        combine_edits(model, {"default": (0.0, 1.0), "other": (0.0, 1.0)}, "x")
    with pytest.raises(TypeError, match="PeftModel"):
        combine_edits(model.base_model, {"default": (0.0, 1.0)}, "x")
    assert "x" not in model.peft_config  # nothing half-made


def test_steering_an_inactive_adapter_acts_like_merging_it():
    """The steering names what acts: steering "def" while "default" is the active adapter shifts by "def"'s edit (it
    was silently the base model before), bit for bit what merging "def" gives; the combined adapter is steered the
    same way without being made active."""
    model = _two_adapters()
    assert model.active_adapter == "default"
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with model.base_model.steer(1.0, 2.0, ["def"]):
            steered = model(input_ids=ids).logits
        model.base_model.merge_adapter(["def"], feature_factor=1.0, lr=2.0, keep_original=True)
        merged = model(input_ids=ids).logits
        model.base_model.unmerge_adapter()
    assert not torch.allclose(steered, base, atol=1e-4) and torch.equal(steered, merged)
    assert model.active_adapter == "default"
