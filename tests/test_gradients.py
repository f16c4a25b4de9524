"""The gradient engine against plain autograd."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.objective import batch_gradients, per_example_encoder_dots
from gradiend_peft.objective.gradients import per_row_losses

from batches import batch_for, causal_lm_batch
from tiny import MODEL_BUILDERS, word_tokenizer

FAMILIES = ["bert", "gpt2", "llama", "gemma3"]


def _peft(family, include_embeddings=True, **kwargs):
    """A float64 model, so that the engine and the plain computations agree to ~1e-12 regardless of op order."""
    config = GradiendConfig(include_embeddings=include_embeddings, init_seed=0, **kwargs)
    return get_peft_model(MODEL_BUILDERS[family]().double(), config).double()


def _plain_row_losses(model, batch, key):
    """Independent per-row loss: -log softmax at each labelled position, averaged per row, by explicit loops."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = []
    for i in range(logits.shape[0]):
        terms = [
            -torch.log_softmax(logits[i, t], -1)[batch[key][i, t]]
            for t in range(logits.shape[1])
            if batch[key][i, t] != -100
        ]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses)


def _close(actual, expected):
    """Equal to 1e-6 of the tensor's own scale. The models run in float64, but Llama's and Gemma's RMSNorm
    compute in float32 whatever the input dtype, so float32 rounding (~1e-7) is the floor."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()) + 1e-15)


def _target_weights(peft_model):
    layers = peft_model.base_model.gradiend_layers()
    return {name: layer.get_base_layer().weight for name, layer in layers.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_gradients_equal_autograd_of_mean_loss(family):
    peft_model = _peft(family)
    batch = batch_for(family)
    grads = batch_gradients(peft_model.base_model, batch, ["factual", "alternative", "diff"])
    weights = _target_weights(peft_model)
    base = peft_model.get_base_model()
    for w in weights.values():
        w.requires_grad_(True)
    fact = _plain_row_losses(base, batch, "factual_labels").mean()
    alt = _plain_row_losses(base, batch, "alternative_labels").mean()
    names = list(weights)
    expected_f = torch.autograd.grad(fact, [weights[n] for n in names], retain_graph=True)
    expected_a = torch.autograd.grad(alt, [weights[n] for n in names])
    for name, ef, ea in zip(names, expected_f, expected_a):
        _close(grads["factual"][name], ef)
        _close(grads["alternative"][name], ea)
        _close(grads["diff"][name], ef - ea)


def test_gradient_pass_restores_requires_grad_and_training_mode():
    peft_model = _peft("bert")
    peft_model.train()
    before = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    batch_gradients(peft_model.base_model, batch_for("bert"), ["diff"])
    assert {n: p.requires_grad for n, p in peft_model.named_parameters()} == before
    assert all(m.training for m in peft_model.modules())


def test_gradients_are_taken_without_dropout():
    peft_model = _peft("bert")
    peft_model.train()  # dropout would make two passes differ
    batch = batch_for("bert")
    first = batch_gradients(peft_model.base_model, batch, ["factual"])["factual"]
    second = batch_gradients(peft_model.base_model, batch, ["factual"])["factual"]
    for name in first:
        assert torch.equal(first[name], second[name])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["alternative", "diff"])
def test_per_example_dots_equal_per_row_autograd_loop(family, kind):
    peft_model = _peft(family, latent_dim=2)
    batch = batch_for(family)
    tuner = peft_model.base_model
    dots = per_example_encoder_dots(tuner, batch, kind, "default")
    weights = _target_weights(peft_model)
    layers = tuner.gradiend_layers()
    base = peft_model.get_base_model()
    for w in weights.values():
        w.requires_grad_(True)
    expected = []
    for i in range(batch["input_ids"].shape[0]):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        if kind == "diff":
            loss = (_plain_row_losses(base, row, "factual_labels") - _plain_row_losses(base, row, "alternative_labels")).sum()
        else:
            loss = _plain_row_losses(base, row, "alternative_labels").sum()
        names = list(weights)
        grads = torch.autograd.grad(loss, [weights[n] for n in names])
        total = sum((layers[n].gradiend_encoder["default"] * g).flatten(1).sum(1) for n, g in zip(names, grads))
        expected.append(total)
    _close(dots, torch.stack(expected))


def test_tied_embedding_gradient_includes_the_lm_head_use():
    peft_model = _peft("gpt2", target_modules=["c_fc"])  # plus the embedding (include_embeddings=True)
    base = peft_model.get_base_model()
    assert base.lm_head.weight is base.transformer.wte.get_base_layer().weight  # tied
    batch = causal_lm_batch()
    grads = batch_gradients(peft_model.base_model, batch, ["factual"])["factual"]
    wte = base.transformer.wte.get_base_layer().weight
    wte.requires_grad_(True)
    expected = torch.autograd.grad(_plain_row_losses(base, batch, "factual_labels").mean(), wte)[0]
    _close(grads["transformer.wte"], expected)
    # the LM head's share is not zero: rows of tokens that never appear in the input still get gradient
    unused = torch.ones(wte.shape[0], dtype=torch.bool)
    unused[batch["input_ids"].unique()] = False
    assert grads["transformer.wte"][unused].abs().sum() > 0


def test_causal_label_is_the_next_token_after_the_prefix():
    model = MODEL_BUILDERS["gpt2"]()
    tok = word_tokenizer("gpt2")
    prefix = tok("The nurse said that")["input_ids"]
    she = tok(" she")["input_ids"][0]
    ids = torch.tensor([prefix + [tok.pad_token_id] * 3])
    labels = torch.full_like(ids, -100)
    labels[0, len(prefix) - 1] = she
    logits = model(input_ids=ids, attention_mask=(torch.arange(ids.shape[1]) < len(prefix)).long()[None]).logits
    # known answer: the probability the model gives " she" right after the prefix alone
    next_logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
    expected = -torch.log_softmax(next_logits, -1)[she]
    torch.testing.assert_close(per_row_losses(logits, labels)[0], expected, rtol=1e-5, atol=1e-6)
    # one position off gives a different loss
    shifted = torch.full_like(ids, -100)
    shifted[0, len(prefix) - 2] = she
    assert not torch.allclose(per_row_losses(logits, shifted)[0], expected)


def test_per_row_losses_refuse_rows_without_labels():
    logits = torch.randn(2, 3, 5)
    labels = torch.full((2, 3), -100)
    labels[0, 1] = 2
    with pytest.raises(ValueError, match=r"Rows \[1\]"):
        per_row_losses(logits, labels)


def test_per_row_losses_match_cross_entropy():
    logits = torch.randn(3, 4, 7)
    labels = torch.full((3, 4), -100)
    labels[0, 1], labels[1, 2], labels[1, 3], labels[2, 0] = 3, 1, 6, 0
    got = per_row_losses(logits, labels)
    expected = torch.stack([
        F.cross_entropy(logits[0, 1:2], labels[0, 1:2]),
        F.cross_entropy(logits[1, 2:4], labels[1, 2:4]),
        F.cross_entropy(logits[2, 0:1], labels[2, 0:1]),
    ])
    torch.testing.assert_close(got, expected)


def test_per_example_dots_serve_several_kinds_and_are_differentiable_in_the_probes():
    from gradiend_peft.objective import per_example_dots

    peft_model = _peft("llama")
    tuner = peft_model.base_model
    batch = batch_for("llama")
    layers = tuner.gradiend_layers()
    probes = {name: layer.gradiend_decoder["default"] for name, layer in layers.items()}
    both = per_example_dots(tuner, batch, {"factual": probes, "alternative": probes})
    for kind in ("factual", "alternative"):
        torch.testing.assert_close(both[kind], per_example_dots(tuner, batch, {kind: probes})[kind])
    # d/dP of sum_i <P, G_i> is sum_i G_i, the gradient of the summed loss
    both["factual"].sum().backward()
    weights = _target_weights(peft_model)
    for w in weights.values():
        w.requires_grad_(True)
    summed = _plain_row_losses(peft_model.get_base_model(), batch, "factual_labels").sum()
    names = list(weights)
    expected = torch.autograd.grad(summed, [weights[n] for n in names])
    for name, grad in zip(names, expected):
        _close(layers[name].gradiend_decoder["default"].grad[0], grad)
