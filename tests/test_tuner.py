"""The GRADIEND tuner: injection, merge/unmerge, steering, multiple adapters, configuration errors."""

import json
import pickle

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils.peft_types import PeftType

import gradiend_peft
from gradiend_peft import GradiendConfig
from gradiend_peft.objective import encode_group, encode_rows, reconstruction_loss
from gradiend_peft.tuner.layer import Conv1DLayer, Embedding, Linear

from batches import batch_for
from tiny import MODEL_BUILDERS

EXPECTED_TARGETS = {  # default targets per block, 2 blocks each
    "bert": 12, "roberta": 12, "distilbert": 12, "gpt2": 8, "llama": 14, "gemma3": 14,
}


def _logits(model, family):
    batch = batch_for(family)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _peft(family, **kwargs):
    kwargs.setdefault("init_seed", 0)
    return get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(**kwargs))


def test_peft_type_member_round_trips():
    assert PeftType("GRADIEND") is PeftType.GRADIEND
    assert json.loads(json.dumps(PeftType.GRADIEND)) == "GRADIEND"
    assert pickle.loads(pickle.dumps(PeftType.GRADIEND)) is PeftType.GRADIEND
    assert gradiend_peft.registration.register() is PeftType.GRADIEND  # idempotent
    assert GradiendConfig().peft_type is PeftType.GRADIEND


@pytest.mark.parametrize("family", sorted(EXPECTED_TARGETS))
def test_default_targets_are_every_block_projection(family):
    model = _peft(family)
    layers = model.base_model.gradiend_layers()
    assert len(layers) == EXPECTED_TARGETS[family]
    expected_cls = Conv1DLayer if family == "gpt2" else Linear
    assert all(type(layer) is expected_cls for layer in layers.values())
    assert not any("lm_head" in name or "cls." in name or "embed" in name or "wte" in name for name in layers)


@pytest.mark.parametrize("family", ["bert", "gpt2", "gemma3"])
def test_include_embeddings_targets_the_input_embedding(family):
    model = _peft(family, include_embeddings=True)
    layers = model.base_model.gradiend_layers()
    embeddings = [layer for layer in layers.values() if isinstance(layer, Embedding)]
    assert len(embeddings) == 1
    assert embeddings[0].get_base_layer() is model.get_base_model().get_input_embeddings().get_base_layer()


def test_objective_is_inferred_from_the_base_model():
    assert _peft("bert").peft_config["default"].objective == "masked_lm"
    assert _peft("llama").peft_config["default"].objective == "causal_lm"


def test_one_rule_decides_masked_or_causal_for_the_tuner_the_loader_and_the_scorers():
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from gradiend_peft.evaluation.scoring import infer_objective as scorers_rule
    from gradiend_peft.embedded_models import _auto_class_for
    from gradiend_peft.tuner.constants import infer_objective

    assert scorers_rule is infer_objective
    cases = [  # (config, expected): names first, then transformers' model tables, is_decoder for types in both
        ({"model_type": "llama", "architectures": ["BertForMaskedLM"]}, "masked_lm"),
        ({"model_type": "bert", "architectures": ["GPT2LMHeadModel"]}, "causal_lm"),
        ({"model_type": "modernbert"}, "masked_lm"),  # an encoder that no hand-kept list named
        ({"model_type": "bert"}, "masked_lm"),
        ({"model_type": "bert", "is_decoder": True}, "causal_lm"),
        ({"model_type": "gemma3_text"}, "causal_lm"),
    ]
    for config, expected in cases:
        assert infer_objective(config) == expected, config
        auto = _auto_class_for(SimpleNamespace(**{"architectures": None, "is_decoder": False, **config}))
        assert auto is (AutoModelForMaskedLM if expected == "masked_lm" else AutoModelForCausalLM), config
    assert infer_objective({"model_type": "no-such-model"}) == "causal_lm"
    assert infer_objective({"model_type": "no-such-model"}, default=None) is None
    with pytest.raises(ValueError, match="neither a causal nor a masked language model"):
        _auto_class_for(SimpleNamespace(model_type="no-such-model", architectures=None))
    for family, expected in [("bert", "masked_lm"), ("distilbert", "masked_lm"), ("gpt2", "causal_lm")]:
        model = _peft(family)
        assert model.peft_config["default"].objective == expected == infer_objective(model), family


def test_the_tuner_lists_restricts_and_drops_its_adapter_tensors():
    from gradiend_peft.tuner.model import tuner_of

    model = _peft("bert", latent_dim=2)
    tuner = model.base_model
    assert tuner_of(model) is tuner and tuner_of(tuner) is tuner
    with pytest.raises(TypeError, match="get_peft_model"):
        tuner_of(model.get_base_model())
    # one listing: the model's own adapter entries, the same live tensors, under the saved file's names
    own = {name.removesuffix(".default"): tensor for name, tensor in model.state_dict(keep_vars=True).items()
           if "gradiend_" in name}
    state = tuner.adapter_state_dict()
    assert set(state) == set(own) and all(state[name] is own[name] for name in own)
    assert {id(p) for p in tuner.adapter_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    # restrict: keep entries 1 and 3 of every module (positions among the current entries), twice
    layers = tuner.gradiend_layers()
    before = {m: layer.gradiend_decoder["default"].detach().reshape(2, -1).clone() for m, layer in layers.items()}
    tuner.restrict_entries("default", {m: torch.tensor([1, 3, 5]) for m in layers})
    kept = tuner.restrict_entries("default", {m: torch.tensor([0, 2]) for m in layers})
    assert kept == {m: 2 for m in layers} == model.peft_config["default"].kept_entries
    for m, layer in layers.items():
        assert layer.gradiend_kept_indices["default"].tolist() == [1, 5]
        assert torch.equal(layer.gradiend_decoder["default"], before[m][:, [1, 5]])
    assert tuner.num_entries() == 2 * len(layers)
    # drop: the other modules' tensors go, the whole adapter's size stays what the config records
    keep = set(list(layers)[:2])
    freed = tuner.drop_modules("default", keep)
    # per dropped module, 2 kept entries: E and D (k = 2) and c in float32, the indices in int32 (small weights)
    assert freed == (len(layers) - 2) * (2 * (2 * 2 * 4) + 2 * 4 + 2 * 4)
    assert set(tuner.gradiend_layers("default")) == keep and tuner.num_entries() == 2 * len(layers)
    with pytest.raises(ValueError, match="no longer holds"):
        tuner.drop_modules("default", set(layers))


def test_initialisation_follows_the_reference_scheme():
    model = _peft("bert", init_seed=3)
    tuner = model.base_model
    layers = tuner.gradiend_layers()
    n = sum(layer.weight_shape[0] * layer.weight_shape[1] for layer in layers.values())
    encoder = torch.cat([layer.gradiend_encoder["default"].flatten() for layer in layers.values()])
    decoder = torch.cat([layer.gradiend_decoder["default"].flatten() for layer in layers.values()])
    bound = 1 / n**0.5
    assert encoder.abs().max() <= bound and encoder.abs().max() > 0.99 * bound
    assert decoder.abs().max() <= encoder.abs().max()
    assert encoder.numel() == n and decoder.numel() == n
    again = _peft("bert", init_seed=3).base_model.gradiend_layers()
    assert all(torch.equal(layers[k].gradiend_encoder["default"], again[k].gradiend_encoder["default"]) for k in layers)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_unmerged_unsteered_model_equals_base_bit_for_bit(family):
    base_logits = _logits(MODEL_BUILDERS[family](), family)
    model = _peft(family, include_embeddings=True)
    assert torch.equal(_logits(model, family), base_logits)


@pytest.mark.parametrize("family", ["bert", "gpt2", "gemma3"])
def test_merge_and_unload_equals_hand_computed_weights(family):
    model = _peft(family, include_embeddings=True, latent_dim=2)
    tuner = model.base_model
    tuner.gradiend_gradient_scale["default"].fill_(4.0)
    factor, lr = torch.tensor([0.5, -1.0]), 0.3
    expected = {}
    for name, layer in tuner.gradiend_layers().items():
        w = layer.get_base_layer().weight.detach().clone()
        d = layer.gradiend_decoder["default"].detach()
        c = layer.gradiend_decoder_bias["default"].detach()
        expected[name] = w + lr * (factor[0] * d[0] + factor[1] * d[1] + c) / 4.0
    untouched = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" not in n and "gradiend" not in n}
    merged = model.merge_and_unload(feature_factor=factor, lr=lr)
    params = dict(merged.named_parameters())
    eps = torch.finfo(torch.float32).eps
    for name, value in expected.items():
        # the library sums in another order than the test: a few float32 roundings of the largest term
        torch.testing.assert_close(params[f"{name}.weight"], value, rtol=0, atol=8 * eps * float(value.abs().max()))
    assert not any("gradiend" in n for n in params)
    for name, value in untouched.items():
        if name in params:
            assert torch.equal(params[name], value), name


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_steering_equals_merging(family):
    model = _peft(family, include_embeddings=True)
    with model.base_model.steer(feature_factor=1.0, lr=50.0):
        steered = _logits(model, family)
    unsteered = _logits(model, family)
    model.merge_adapter(feature_factor=1.0, lr=50.0)
    merged = _logits(model, family)
    torch.testing.assert_close(steered, merged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, unsteered, atol=1e-3)


def test_unmerge_restores_base_weights():
    model = _peft("llama", include_embeddings=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.merge_adapter(feature_factor=-1.0, lr=20.0)
    assert not all(torch.equal(before[n], p) for n, p in model.named_parameters())
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, before[name], rtol=0, atol=1e-6)
    current = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.merge_adapter(feature_factor=-1.0, lr=20.0, keep_original=True)
    model.unmerge_adapter()
    assert all(torch.equal(current[n], p) for n, p in model.named_parameters())


def test_disable_adapter_gives_base_outputs_while_steering_or_merged():
    base_logits = _logits(MODEL_BUILDERS["gpt2"](), "gpt2")
    model = _peft("gpt2", include_embeddings=True)
    model.base_model.set_steering(feature_factor=1.0, lr=10.0)
    with model.disable_adapter():
        assert torch.equal(_logits(model, "gpt2"), base_logits)
    model.base_model.clear_steering()
    model.merge_adapter(feature_factor=1.0, lr=10.0, keep_original=True)
    with model.disable_adapter():
        assert torch.equal(_logits(model, "gpt2"), base_logits)


def test_merge_needs_feature_factor_and_lr():
    model = _peft("bert")
    with pytest.raises(ValueError, match="needs a feature_factor and an lr"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="lr must be finite"):
        model.merge_adapter(feature_factor=1.0, lr=float("nan"))
    with pytest.raises(ValueError, match="feature_factor must be finite"):
        model.merge_adapter(feature_factor=float("inf"), lr=1.0)
    # without arguments, the config's feature_factor and lr: the same weights as passing them
    merged = dict(_peft("bert", feature_factor=1.0, lr=2.0).merge_and_unload().named_parameters())
    explicit = dict(_peft("bert").merge_and_unload(feature_factor=1.0, lr=2.0).named_parameters())
    base = dict(MODEL_BUILDERS["bert"]().named_parameters())
    assert merged.keys() == explicit.keys() == base.keys()
    assert all(torch.equal(merged[n], explicit[n]) for n in merged)
    assert not all(torch.equal(merged[n], base[n]) for n in merged)  # the merge changed weights


def test_several_adapters_add_set_delete():
    model = _peft("llama", init_seed=1)
    model.add_adapter("second", GradiendConfig(init_seed=2, latent_dim=2))
    tuner = model.base_model
    assert set(tuner.gradiend_encoder_bias) == {"default", "second"}
    assert tuner.gradiend_encoder_bias["second"].shape == (2,)
    assert tuner.gradiend_encoder_bias["default"].requires_grad
    assert not tuner.gradiend_encoder_bias["second"].requires_grad
    model.set_adapter("second")
    assert tuner.gradiend_encoder_bias["second"].requires_grad
    assert not tuner.gradiend_encoder_bias["default"].requires_grad
    layer = next(iter(tuner.gradiend_layers().values()))
    assert layer.gradiend_encoder["second"].requires_grad and not layer.gradiend_encoder["default"].requires_grad
    batch = batch_for("llama")
    assert encode_group(tuner, batch).shape == (2,)
    assert encode_group(tuner, batch, adapter_name="default").shape == (1,)
    model.delete_adapter("default")
    assert set(tuner.gradiend_encoder_bias) == {"second"}
    assert all("default" not in layer.gradiend_encoder for layer in tuner.gradiend_layers().values())


def test_encode_rows_matches_group_encoding_of_single_rows():
    model = _peft("bert")
    tuner = model.base_model
    batch = batch_for("bert")
    rows = encode_rows(tuner, batch)
    for i in range(3):
        single = encode_group(tuner, {k: v[i : i + 1] for k, v in batch.items()})
        torch.testing.assert_close(rows[i], single, rtol=1e-4, atol=1e-6)


def test_feature_factor_follows_the_reference_sign_convention():
    alt = _peft("bert", feature_classes=["M", "F"]).base_model
    assert alt.feature_factor_for("M") == 1.0 and alt.feature_factor_for("F") == -1.0
    assert alt.feature_factor_for("M", strengthen=False) == -1.0
    diff = _peft("bert", feature_classes=["M", "F"], source="diff").base_model
    assert diff.feature_factor_for("M") == -1.0
    with pytest.raises(ValueError, match="Unknown class 'X'"):
        alt.feature_factor_for("X")


def test_unknown_target_modules_list_the_candidates():
    with pytest.raises(ValueError) as err:
        _peft("llama", target_modules=["query"])
    message = str(err.value)
    assert "q_proj" in message and "down_proj" in message and "all-linear" in message


def test_unsupported_module_type_is_refused():
    with pytest.raises(TypeError, match="LlamaMLP, which GRADIEND does not support"):
        _peft("llama", target_modules=["mlp"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim must be an integer in"),
        ({"latent_dim": 1.5}, "latent_dim must be an integer in"),
        ({"activation": "swish"}, "Unknown activation 'swish'"),
        ({"source": "both"}, "Unknown source 'both'"),
        ({"target": "grad"}, "Unknown target 'grad'"),
        ({"objective": "seq2seq"}, "Unknown objective 'seq2seq'"),
        ({"feature_classes": ["M"]}, "two different class names"),
        ({"feature_classes": ["M", "M"]}, "two different class names"),
        ({"feature_classes": ["M", "F"], "class_signs": {"M": 1, "F": 1}}, "one class \\+1 and the other -1"),
        ({"class_signs": {"M": 1, "F": -1}}, "must name exactly the feature_classes"),
        ({"feature_factor": float("nan")}, "feature_factor must be a finite number"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"target_parameters": ["weight"]}, "leave target_parameters=None"),
        ({"kept_entries": {"a": -1}}, "non-negative integers"),
    ],
)
def test_invalid_config_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradiendConfig(**kwargs)


def test_unknown_model_type_without_targets_asks_for_target_modules():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="no default target modules for model type 'opt'"):
        get_peft_model(model, GradiendConfig())
    assert len(get_peft_model(model, GradiendConfig(target_modules="all-linear")).base_model.gradiend_layers()) == 6


def test_peft_model_class_is_standard():
    model = _peft("bert")
    assert isinstance(model, PeftModel)


@pytest.mark.parametrize("source, target", [("alternative", "diff"), ("factual", "factual"), ("diff", "alternative")])
def test_reconstruction_loss_equals_hand_computation(source, target):
    from gradiend_peft.objective import batch_gradients

    model = get_peft_model(MODEL_BUILDERS["gpt2"]().double(), GradiendConfig(source=source, target=target, latent_dim=2, init_seed=0)).double()
    tuner = model.base_model
    batch = batch_for("gpt2")  # float64 throughout: the diff gradient cancels digits
    loss, latent, n = reconstruction_loss(tuner, batch)
    grads = batch_gradients(tuner, batch, ["factual", "alternative"])
    grads["diff"] = {m: grads["factual"][m] - grads["alternative"][m] for m in grads["factual"]}
    layers = tuner.gradiend_layers()
    src = torch.cat([grads[source][m].flatten() for m in layers])
    tgt = torch.cat([grads[target][m].flatten() for m in layers])
    scale = 1 / src.pow(2).mean().sqrt()  # calibrated on the first call: unit RMS
    assert tuner.gradient_scale() == pytest.approx(float(scale), rel=1e-5)
    E = torch.cat([layers[m].gradiend_encoder["default"].flatten(1) for m in layers], dim=1)
    D = torch.cat([layers[m].gradiend_decoder["default"].flatten(1) for m in layers], dim=1)
    c = torch.cat([layers[m].gradiend_decoder_bias["default"].flatten() for m in layers])
    h = torch.tanh(scale * (E @ src) + tuner.gradiend_encoder_bias["default"])
    torch.testing.assert_close(latent, h, rtol=1e-5, atol=1e-6)
    expected = (h @ D + c - scale * tgt).pow(2).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert n == src.numel()
    decoded = tuner.decode(h.detach())
    torch.testing.assert_close(torch.cat([decoded[m].flatten() for m in layers]), (h.detach() @ D + c).detach() / scale)
