"""PEFT's generic tuner contract, checked on GRADIEND over model families and layer kinds.

The checks of peft's own generic tuner tests (``tests/test_custom_models.py``, which the harness in
``shared/peft-contract`` runs against GRADIEND on toy MLPs) that apply to a method whose adapter leaves the forward
pass unchanged until it is merged or steered, written again here for real transformers architectures:

- the gradients the engine computes equal plain float64 autograd;
- a merge writes the hand formula ``W + lr * (sum_j f_j D_j + c) / s``; steering computes the same forward;
- save/load round trips (also under another adapter name, and with ``low_cpu_mem_usage=True``);
- adapter bookkeeping: add, set, disable, delete, ``set_requires_grad``, inference mode (the tuner-level encoder
  bias included);
- the dtype policy on a bfloat16 base (``autocast_adapter_dtype``);
- one optimiser step on the reconstruction loss lowers it;
- ``in_features`` / ``out_features`` on every layer, ``modules_to_save`` refused.

Checks of peft's suite that do not apply to GRADIEND (training on the forward loss, an unmerged adapter changing
outputs) are listed in ``docs/concepts.md`` ("GRADIEND as a PEFT method").

The matrix (`CASES`): BERT, RoBERTa, DistilBERT, GPT-2, Llama and Gemma-3 with their default targets (``nn.Linear``;
transformers' ``Conv1D`` for GPT-2), and with ``include_embeddings=True``: an untied input embedding (Llama) or an
embedding tied to the LM head (the masked LMs and GPT-2 tie by default, Gemma-3 too).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import gradiend_peft  # noqa: F401  (registers GRADIEND with peft)
from gradiend_peft import GradiendConfig, GradiendTrainer
from gradiend_peft.objective import batch_gradients, reconstruction_loss
from gradiend_peft.tuner.layer import Conv1DLayer, Embedding, Linear

from batches import batch_for
from training_fixtures import arguments, pairs, tokenizer
from tiny import MODEL_BUILDERS

CASES = [
    ("bert", "linear"), ("roberta", "linear"), ("distilbert", "linear"), ("gpt2", "conv1d"), ("llama", "linear"),
    ("gemma3", "linear"),
    ("llama", "embedding"),  # untied input embedding
    ("bert", "tied"), ("roberta", "tied"), ("distilbert", "tied"), ("gpt2", "tied"), ("gemma3", "tied"),
]
IDS = [f"{family}-{kind}" for family, kind in CASES]
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
FACTOR, LR, SCALE = torch.tensor([0.5, -1.0]), 0.3, 4.0  # a rewrite with latent_dim=2 and a calibrated scale


def config(kind: str, **kwargs) -> GradiendConfig:
    kwargs.setdefault("init_seed", 0)
    kwargs.setdefault("latent_dim", 2)
    return GradiendConfig(include_embeddings=kind in ("embedding", "tied"), **kwargs)


def peft_model(family: str, kind: str, dtype=None, autocast_adapter_dtype: bool = True, **kwargs):
    base = MODEL_BUILDERS[family]()
    if dtype is not None:
        base = base.to(dtype)
    return get_peft_model(base, config(kind, **kwargs), autocast_adapter_dtype=autocast_adapter_dtype)


def logits(model, family: str) -> torch.Tensor:
    batch = batch_for(family)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@functools.lru_cache(maxsize=None)
def base_logits(family: str) -> torch.Tensor:
    """The logits of the plain transformers model (cached: the tests compare against them, never change them)."""
    return logits(MODEL_BUILDERS[family](), family)


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "gradiend_" in n}


def gradiend_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "gradiend_" in n}


def float32_merge_bound(layer, weight: torch.Tensor, factor: torch.Tensor, lr: float, scale: float) -> torch.Tensor:
    """Elementwise bound on a float32 merge's round-off: ``k + 2`` roundings of the decoded terms (k products, the
    bias, the step) and a few of the weight, each at most ``eps`` of the magnitudes involved."""
    k = factor.numel()
    decoder = layer.gradiend_decoder["default"].detach().double()
    terms = sum(abs(float(factor[j])) * decoder[j].abs() for j in range(k))
    terms = terms + layer.gradiend_decoder_bias["default"].detach().double().abs()
    return 4 * EPS32 * (weight.double().abs() + (k + 2) * abs(lr) / scale * terms)


def hand_merge(layer, factor: torch.Tensor, lr: float, scale: float) -> torch.Tensor:
    """``W + lr * (sum_j f_j D_j + c) / s`` in float64, from the stored values."""
    weight = layer.get_base_layer().weight.detach().double()
    decoder = layer.gradiend_decoder["default"].detach().double()
    decoded = sum(float(factor[j]) * decoder[j] for j in range(factor.numel()))
    decoded = decoded + layer.gradiend_decoder_bias["default"].detach().double()
    return weight + lr * decoded / scale


# ------------------------------------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_case_has_the_layer_kind_it_names(family, kind):
    tuner = peft_model(family, kind).base_model
    classes = {type(layer) for layer in tuner.gradiend_layers().values()}
    expected = {"conv1d": Conv1DLayer}.get(kind, Conv1DLayer if family == "gpt2" else Linear)
    assert expected in classes
    assert (Embedding in classes) == (kind in ("embedding", "tied"))
    assert bool(tuner.tied_heads()) == (kind == "tied")


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_layers_expose_in_and_out_features(family, kind):
    for layer in peft_model(family, kind).base_model.gradiend_layers().values():
        base = layer.get_base_layer()
        if isinstance(layer, Conv1DLayer):  # transformers' Conv1D stores its weight (in, out)
            expected = (base.weight.shape[0], base.weight.shape[1])
        elif isinstance(layer, Embedding):  # as peft's embedding layers: rows in, embedding size out
            expected = (base.num_embeddings, base.embedding_dim)
        else:
            expected = (base.in_features, base.out_features)
        assert (layer.in_features, layer.out_features) == expected


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_engine_gradients_equal_float64_autograd(family, kind):
    """`batch_gradients` against ``torch.autograd.grad`` of the row-mean loss on the full logits, both in float64
    (a float64 base gets a float64 adapter by the dtype policy). A tied weight's gradient has both uses in both.

    Tolerance: the engine runs the LM head on the labelled positions only and sums in another order, so each entry
    may differ by a few hundred roundings of the largest term (measured: under 2); a float32 engine would miss by
    about 1e9 of these units."""
    model = peft_model(family, kind, dtype=torch.float64)
    tuner = model.base_model
    assert all(p.dtype == torch.float64 for p in gradiend_parameters(model).values())
    batch = batch_for(family)
    engine = batch_gradients(tuner, batch, ["factual", "alternative", "diff"])

    layers = tuner.gradiend_layers()
    weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    unique = list({id(w): w for w in weights.values()}.values())
    for weight in unique:
        assert not weight.requires_grad  # the engine restored the flags
        weight.requires_grad_(True)
    out = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def row_losses(labels):
        mask = labels != -100
        tokens = F.cross_entropy(out.transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none")
        return (tokens * mask).sum(1) / mask.sum(1)

    factual, alternative = row_losses(batch["factual_labels"]), row_losses(batch["alternative_labels"])
    objectives = {"factual": factual.mean(), "alternative": alternative.mean(), "diff": (factual - alternative).mean()}
    reference = {kind_: dict(zip(map(id, unique), torch.autograd.grad(loss, unique, retain_graph=True)))
                 for kind_, loss in objectives.items()}
    for name, weight in weights.items():
        scale = max(float(reference[k][id(weight)].abs().max()) for k in ("factual", "alternative"))
        for kind_ in objectives:
            got, want = engine[kind_][name], reference[kind_][id(weight)]
            assert got.dtype == torch.float64 and got.shape == weight.shape
            torch.testing.assert_close(got, want, rtol=0, atol=256 * EPS64 * scale, msg=f"{kind_} {name}")


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_merge_writes_the_hand_formula(family, kind):
    model = peft_model(family, kind)
    tuner = model.base_model
    tuner.gradiend_gradient_scale["default"].fill_(SCALE)
    layers = tuner.gradiend_layers()
    expected = {name: hand_merge(layer, FACTOR, LR, SCALE) for name, layer in layers.items()}
    originals = {name: layer.get_base_layer().weight.detach().clone() for name, layer in layers.items()}
    bounds = {name: float32_merge_bound(layer, layer.get_base_layer().weight, FACTOR, LR, SCALE)
              for name, layer in layers.items()}
    untouched = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters()
                 if "gradiend_" not in n and not any(n.startswith(f"{m}.") for m in layers)}
    merged = model.merge_and_unload(feature_factor=FACTOR, lr=LR)
    modules = dict(merged.named_modules())
    for name, value in expected.items():
        weight = modules[name].weight
        assert weight.dtype == torch.float32
        assert ((weight.double() - value).abs() <= bounds[name]).all(), name
        assert not torch.equal(weight, originals[name])
    if kind == "tied":  # the LM head shares the merged tensor
        assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    params = dict(merged.named_parameters())
    assert not any("gradiend_" in n for n in params)
    for name, value in untouched.items():
        if name in params:
            assert torch.equal(params[name], value), name


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_steering_equals_merging(family, kind):
    """Unmerged and unsteered, the outputs are the base model's bit for bit (docs/guides/steering.md). Steered, a
    target module calls its base layer with ``shifted_weight(delta_weight(...))``, the very tensor a merge writes,
    so the logits equal the merged model's bit for bit (``torch.equal``).

    A tied LM head (``kind == "tied"``) is not a target module: steering shifts it by a forward hook that adds
    ``x @ delta^T`` to the unshifted head's output, whereas the merged head computes ``x @ (W + delta)^T``. The
    inputs ``x`` are equal (everything before the head is computed as merged), so the logits differ by the
    round-off of two length-``d`` dot products and two additions, bounded elementwise by
    ``2 (d + 4) eps32 (|x| @ (|W| + |delta|)^T + |b|)``.
    """
    model = peft_model(family, kind)
    tuner = model.base_model
    tuner.gradiend_gradient_scale["default"].fill_(SCALE)
    assert torch.equal(logits(model, family), base_logits(family))
    lr = 50 * LR
    with tuner.steer(feature_factor=FACTOR, lr=lr):
        steered = logits(model, family)
    assert not torch.allclose(steered, base_logits(family), atol=1e-3)  # the edit acts
    head = model.get_base_model().get_output_embeddings()
    captured = {}
    handle = head.register_forward_hook(lambda module, args, output: captured.update(x=args[0].detach()))
    head_weight = head.weight.detach().clone()
    model.merge_adapter(feature_factor=FACTOR, lr=lr, keep_original=True)
    merged = logits(model, family)
    handle.remove()
    if kind != "tied":
        assert torch.equal(steered, merged)
    else:
        embedding = tuner.gradiend_layers()[next(iter(tuner.tied_heads()))]
        delta = embedding.delta_weight("default", FACTOR, lr, SCALE)
        x = captured["x"].double().abs()
        magnitude = x @ (head_weight.double().abs() + delta.double().abs()).T
        if head.bias is not None:
            magnitude = magnitude + head.bias.detach().double().abs()
        bound = 2 * (x.shape[-1] + 4) * EPS32 * magnitude
        assert ((steered.double() - merged.double()).abs() <= bound).all()
    model.unmerge_adapter()
    assert torch.equal(logits(model, family), base_logits(family))


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_save_load_round_trip_is_exact(family, kind, tmp_path):
    model = peft_model(family, kind, feature_classes=["M", "F"])
    model.base_model.gradiend_gradient_scale["default"].fill_(SCALE)
    with model.base_model.steer(feature_factor=FACTOR, lr=LR):
        steered = logits(model, family)
    saved = adapter_state(model)
    model.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path)
    assert adapter_state(loaded).keys() == saved.keys()
    assert all(torch.equal(adapter_state(loaded)[k], v) for k, v in saved.items())
    with loaded.base_model.steer(feature_factor=FACTOR, lr=LR):
        assert torch.equal(logits(loaded, family), steered)

    other = peft_model(family, kind, init_seed=1)  # another adapter already in place
    other.load_adapter(tmp_path, adapter_name="loaded")
    renamed = {k.replace(".loaded", ".default"): v for k, v in adapter_state(other).items() if k.endswith(".loaded")}
    assert renamed.keys() == saved.keys()
    assert all(torch.equal(renamed[k], v) for k, v in saved.items())
    other.set_adapter("loaded")
    with other.base_model.steer(feature_factor=FACTOR, lr=LR):
        assert torch.equal(logits(other, family), steered)


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_low_cpu_mem_usage_loading_equals_normal_loading(family, kind, tmp_path):
    model = peft_model(family, kind)
    model.base_model.gradiend_gradient_scale["default"].fill_(SCALE)
    model.save_pretrained(tmp_path)
    normal = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path)
    lean = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path, low_cpu_mem_usage=True)
    lean.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert {t.device.type for t in lean.state_dict().values()} == {"cpu"}  # nothing left on the meta device
    state = adapter_state(normal)
    lean_state = adapter_state(lean)
    assert all(torch.equal(lean_state[k], v) for k, v in state.items())
    assert all(torch.equal(lean_state[k.replace(".default", ".other")], v) for k, v in state.items())
    assert not any(p.requires_grad for p in lean.parameters())  # loaded for inference
    with normal.base_model.steer(feature_factor=FACTOR, lr=LR), lean.base_model.steer(feature_factor=FACTOR, lr=LR):
        assert torch.equal(logits(lean, family), logits(normal, family))


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_one_adamw_step_lowers_the_reconstruction_loss(family, kind):
    """One AdamW step on ``reconstruction_loss`` of a fixed row group lowers it by at least half of the first-order
    prediction ``lr * sum g^2 / (|g| + eps)`` (Adam's first step; measured: over 98% of it). Every adapter parameter,
    the encoder bias included, moves; no base parameter does. In float64 (a float64 base gets a float64 adapter), so
    that the small decrease of one step stands far above round-off."""
    model = peft_model(family, kind, dtype=torch.float64)
    tuner = model.base_model
    batch = batch_for(family)
    trainable = gradiend_parameters(model)
    assert trainable and all(p.requires_grad for p in trainable.values())
    assert "base_model.gradiend_encoder_bias.default" in trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    lr, eps = 1e-6, 1e-8
    optimizer = torch.optim.AdamW(trainable.values(), lr=lr, eps=eps, weight_decay=0.0)
    loss, _, _ = reconstruction_loss(tuner, batch)  # calibrates the gradient scale on this row group
    loss.backward()
    predicted = lr * sum(float((p.grad.pow(2) / (p.grad.abs() + eps)).sum()) for p in trainable.values())
    optimizer.step()
    with torch.no_grad():
        after, _, _ = reconstruction_loss(tuner, batch)
    assert float(loss.detach()) - float(after) >= 0.5 * predicted > 0
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_add_set_disable_delete_adapters(family, kind):
    model = peft_model(family, kind, init_seed=1)
    tuner = model.base_model
    model.add_adapter("second", config(kind, init_seed=2, latent_dim=1))
    params = gradiend_parameters(model)
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in params if n.endswith(".default")}
    assert set(tuner.gradiend_encoder_bias) == {"default", "second"}
    assert torch.equal(logits(model, family), base_logits(family))  # adding changes no output

    model.set_adapter("second")
    assert model.active_adapters == ["second"]
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in params if n.endswith(".second")}
    model.base_model.set_requires_grad("default", True)
    assert all(p.requires_grad for p in gradiend_parameters(model).values())
    model.base_model.set_requires_grad(["default", "second"], False)
    assert not any(p.requires_grad for p in gradiend_parameters(model).values())

    tuner.set_steering(feature_factor=1.0, lr=50.0)  # the active adapter, "second"
    steered = logits(model, family)
    assert not torch.allclose(steered, base_logits(family), atol=1e-3)
    with model.disable_adapter():
        assert torch.equal(logits(model, family), base_logits(family))
    assert torch.equal(logits(model, family), steered)
    tuner.clear_steering()
    model.merge_adapter(feature_factor=1.0, lr=50.0, keep_original=True)
    with model.disable_adapter():  # as peft's layers do: a disabled adapter is unmerged first
        assert torch.equal(logits(model, family), base_logits(family))
    assert tuner.merged_adapter_names() == []

    model.delete_adapter("default")
    assert set(tuner.gradiend_encoder_bias) == set(tuner.gradiend_gradient_scale) == {"second"}
    assert not any(".default" in n for n in model.state_dict())
    assert all(set(layer.gradiend_encoder) == {"second"} for layer in tuner.gradiend_layers().values())
    with tuner.steer(feature_factor=1.0, lr=50.0):
        assert torch.equal(logits(model, family), steered)


@pytest.mark.parametrize("family, kind", CASES, ids=IDS)
def test_inference_mode_freezes_every_adapter_parameter(family, kind, tmp_path):
    frozen = peft_model(family, kind, inference_mode=True)
    assert not any(p.requires_grad for p in frozen.parameters())

    peft_model(family, kind).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())

    trainable = PeftModel.from_pretrained(MODEL_BUILDERS[family](), tmp_path, is_trainable=True)
    params = gradiend_parameters(trainable)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == set(params)
    loss, _, _ = reconstruction_loss(trainable.base_model, batch_for(family))
    loss.backward()  # every adapter parameter, the encoder bias included, is trained
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params.values())

    trainable.load_adapter(tmp_path, adapter_name="frozen")  # not trainable: the first adapter stays as it was
    trainable.load_adapter(tmp_path, adapter_name="third", is_trainable=True)
    wanted = set(params) | {n for n in gradiend_parameters(trainable) if n.endswith(".third")}
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == wanted


# ---------------------------------------------------------------------------------------------- dtype policy
DTYPE_CASES = [("llama", "embedding"), ("gpt2", "tied")]


@pytest.mark.parametrize("family, kind", DTYPE_CASES, ids=[f"{f}-{k}" for f, k in DTYPE_CASES])
def test_bf16_base_gets_a_float32_adapter_by_default_and_a_bf16_one_on_request(family, kind, tmp_path):
    default = peft_model(family, kind, dtype=torch.bfloat16)
    default.add_adapter("other", config(kind))
    assert {p.dtype for p in gradiend_parameters(default).values()} == {torch.float32}
    compact = peft_model(family, kind, dtype=torch.bfloat16, autocast_adapter_dtype=False)
    compact.add_adapter("other", config(kind), autocast_adapter_dtype=False)
    assert {p.dtype for p in gradiend_parameters(compact).values()} == {torch.bfloat16}
    for model in (default, compact):
        assert {t.dtype for t in model.base_model.gradiend_gradient_scale.values()} == {torch.float32}

    default.save_pretrained(tmp_path / "f32")
    compact.save_pretrained(tmp_path / "bf16")
    saved32 = load_file(tmp_path / "f32" / "adapter_model.safetensors")
    saved16 = load_file(tmp_path / "bf16" / "adapter_model.safetensors")
    scale_key = "base_model.gradiend_gradient_scale"
    assert {t.dtype for k, t in saved32.items()} == {torch.float32}
    assert {t.dtype for k, t in saved16.items() if k != scale_key} == {torch.bfloat16}
    assert saved16[scale_key].dtype == torch.float32

    def load(folder, autocast):
        base = MODEL_BUILDERS[family]().to(torch.bfloat16)
        return PeftModel.from_pretrained(base, tmp_path / folder, autocast_adapter_dtype=autocast)

    for folder, autocast, dtype in [("bf16", True, torch.float32), ("f32", False, torch.bfloat16),
                                    ("bf16", False, torch.bfloat16), ("f32", True, torch.float32)]:
        loaded = load(folder, autocast)
        source = compact if folder == "bf16" else default
        state = adapter_state(loaded)
        for key, value in adapter_state(source).items():
            if not key.endswith(".default"):
                continue
            want = value if "gradient_scale" in key else value.to(dtype)
            assert state[key].dtype == want.dtype and torch.equal(state[key], want), (folder, autocast, key)

    lean = PeftModel.from_pretrained(MODEL_BUILDERS[family]().to(torch.bfloat16), tmp_path / "f32",
                                     low_cpu_mem_usage=True)  # no detour through the bf16 base dtype
    assert all(torch.equal(adapter_state(lean)[k], v) for k, v in adapter_state(load("f32", True)).items())


@pytest.mark.parametrize("family, kind", DTYPE_CASES, ids=[f"{f}-{k}" for f, k in DTYPE_CASES])
def test_a_bf16_adapter_merges_and_steers_in_float32(family, kind):
    model = peft_model(family, kind, dtype=torch.bfloat16, autocast_adapter_dtype=False)
    tuner = model.base_model
    tuner.gradiend_gradient_scale["default"].fill_(SCALE)
    layers = tuner.gradiend_layers()
    eps16 = torch.finfo(torch.bfloat16).eps
    expected, bounds = {}, {}
    for name, layer in layers.items():
        delta = layer.delta_weight("default", FACTOR, LR, SCALE)
        assert delta.dtype == torch.float32  # the shift is formed in float32 from the bf16 values
        exact = hand_merge(layer, FACTOR, LR, SCALE)
        weight = layer.get_base_layer().weight
        shift_bound = float32_merge_bound(layer, torch.zeros_like(weight), FACTOR, LR, SCALE)
        assert ((delta.double() - (exact - weight.double())).abs() <= shift_bound).all(), name
        expected[name] = exact  # rounded once to bf16 by the merge: at most one bf16 step off
        bounds[name] = eps16 * exact.abs() + 2 * float32_merge_bound(layer, weight, FACTOR, LR, SCALE)
    with tuner.steer(feature_factor=FACTOR, lr=LR):
        steered = logits(model, family)
    model.merge_adapter(feature_factor=FACTOR, lr=LR)
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight
        assert weight.dtype == torch.bfloat16
        assert ((weight.double() - expected[name]).abs() <= bounds[name]).all(), name
    if kind != "tied":
        assert torch.equal(logits(model, family), steered)


def test_casting_the_model_keeps_the_gradient_scale_float32():
    model = peft_model("llama", "linear")
    scale = model.base_model.gradiend_gradient_scale["default"]
    scale.fill_(1 / 3)
    value = scale.clone()
    model.to(torch.bfloat16)  # the user's cast reaches the adapter, not the scale every merge divides by
    assert {p.dtype for p in gradiend_parameters(model).values()} == {torch.bfloat16}
    assert model.base_model.gradiend_gradient_scale["default"].dtype == torch.float32
    assert torch.equal(model.base_model.gradiend_gradient_scale["default"], value)


def test_trainer_takes_a_bf16_adapter_and_refuses_dtypes_it_cannot_train(tmp_path):
    model = peft_model("bert", "linear", dtype=torch.bfloat16, autocast_adapter_dtype=False, latent_dim=1)
    data = pairs("bert")
    args = arguments(tmp_path, eval_strategy="no", max_steps=2)
    GradiendTrainer(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer("bert")).train()
    assert {p.dtype for p in gradiend_parameters(model).values()} == {torch.bfloat16}  # float32 masters, rounded back
    for param in gradiend_parameters(model).values():
        param.data = param.data.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="float8_e4m3fn.*autocast_adapter_dtype=True"):
        GradiendTrainer(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer("bert"))


def test_modules_to_save_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="modules_to_save.*never trained.*target_modules"):
        GradiendConfig(modules_to_save=["lm_head"])
    late = config("linear")
    late.modules_to_save = ["lm_head"]  # set after creation: refused at injection
    with pytest.raises(ValueError, match="never trained"):
        get_peft_model(MODEL_BUILDERS["llama"](), late)
