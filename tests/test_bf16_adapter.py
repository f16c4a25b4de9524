"""Adapters stored in bfloat16 (``autocast_adapter_dtype=False`` on a bfloat16 base): trained as float32 master
weights, saved in bfloat16, encoding and merging as the float32 maths says (`gradiend_peft.training.precision`)."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from gradiend_peft import GradiendConfig
from gradiend_peft.data.collators import collator_for
from gradiend_peft.objective import batch_gradients, encode_rows
from gradiend_peft.objective.gradients import per_example_encoder_dots
from gradiend_peft.training import GradiendTrainer
from gradiend_peft.training.precision import float32_masters, round_to_storage, rounding_generator, stochastic_round

from training_fixtures import arguments, one_thread, pairs, tokenizer  # noqa: F401
from tiny import MODEL_BUILDERS

pytestmark = pytest.mark.usefixtures("one_thread")

BF16_ULP = 2.0**-7  # bfloat16's unit in the last place, relative: a rounding up or down moves a value by less
EPS32 = torch.finfo(torch.float32).eps


def adapter_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "gradiend_" in n}


def bf16_pair():
    """A bfloat16-stored adapter on a bfloat16 base, and a float32 adapter on an identical base holding exactly the
    same (upcast) values: the float32-master run and the float32 run then start from the same point."""
    compact = get_peft_model(MODEL_BUILDERS["bert"](0).to(torch.bfloat16), GradiendConfig(init_seed=0),
                             autocast_adapter_dtype=False)
    wide = get_peft_model(MODEL_BUILDERS["bert"](0).to(torch.bfloat16), GradiendConfig(init_seed=0))
    with torch.no_grad():
        for (name, p16), (_, p32) in zip(adapter_params(compact).items(), adapter_params(wide).items()):
            assert p16.dtype == torch.bfloat16 and p32.dtype == torch.float32, name
            p32.copy_(p16.float())
    return compact, wide


def train(model, tmp_path, name):
    data = pairs("bert")
    args = arguments(tmp_path / name, max_steps=60, eval_steps=30, save_strategy="steps", save_steps=30,
                     logging_steps=10, learning_rate=1e-3)
    trainer = GradiendTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                              processing_class=tokenizer("bert"))
    trainer.train()
    return trainer


def test_a_bf16_adapter_trains_as_float32_masters_and_stays_bf16(tmp_path):
    compact, wide = bf16_pair()
    params = adapter_params(compact)
    identity = {n: id(p) for n, p in params.items()}
    trainer = train(compact, tmp_path, "bf16")
    train(wide, tmp_path, "f32")

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and sum(losses[3:]) < sum(losses[:3])  # the reconstruction error falls...
    assert trainer.training_summary["correlation"] >= 0.9  # ...and the encoder separates the classes
    after = adapter_params(compact)
    assert {n: id(p) for n, p in after.items()} == identity  # same Parameter objects (optimizer references hold)
    assert {p.dtype for p in after.values()} == {torch.bfloat16}
    # the masters ran the float32 run step for step: the stored adapter is that run rounded once (the encoder
    # weights stochastically, from the training seed)
    wide_tensors = dict(zip(after, (p.detach() for p in adapter_params(wide).values())))
    expected = round_to_storage(wide_tensors, {name: torch.bfloat16 for name in after}, trainer.args.seed)
    for name, p16 in after.items():
        assert torch.equal(p16, expected[name]), name
    assert any(".gradiend_encoder." in name and not torch.equal(p16, wide_tensors[name].to(torch.bfloat16))
               for name, p16 in after.items())  # not simply to nearest

    compact.save_pretrained(tmp_path / "saved")
    for folder in (tmp_path / "saved", tmp_path / "bf16" / "checkpoint-30", tmp_path / "bf16" / "checkpoint-60"):
        tensors = load_file(folder / "adapter_model.safetensors")
        assert {t.dtype for k, t in tensors.items() if "gradient_scale" not in k} == {torch.bfloat16}, folder


def test_bf16_encodings_match_the_float32_masters_within_the_rounding_bound(tmp_path):
    """Bound. With ``E' = rd(E)``, ``b' = rd(b)`` (up or down: ``|rd(x) - x| <= u |x|``, ``u = 2^-7`` the relative
    unit in the last place of bfloat16) the pre-activations differ by

        |s <E' - E, g_i> + b' - b| <= u (s sum |E| |g_i| + |b|),

    plus float32 round-off of the two dot products, at most ``n eps32 s sum |E| |g_i|`` each; tanh is 1-Lipschitz, so
    ``|h'_i - h_i|`` obeys the same bound. ``sum |E| |g_i|`` is computed from row ``i``'s own gradient."""
    compact, wide = bf16_pair()
    train(compact, tmp_path, "bf16")
    train(wide, tmp_path, "f32")
    test = pairs("bert")["test"]
    batch = collator_for(tokenizer("bert"), "masked_lm")([test[i] for i in range(len(test))])
    h16 = encode_rows(compact.base_model, batch)[:, 0].double()
    h32 = encode_rows(wide.base_model, batch)[:, 0].double()

    def pre_activation(model):  # s <E, g_i> + b: what tanh squashes (trained encodings saturate near +-1)
        tuner = model.base_model
        dots = per_example_encoder_dots(tuner, batch, "alternative", "default")[:, 0].double()
        return tuner.gradient_scale() * dots + float(tuner.gradiend_encoder_bias["default"].detach()[0])

    pre16, pre32 = pre_activation(compact), pre_activation(wide)

    tuner = wide.base_model
    scale, n = tuner.gradient_scale(), tuner.num_entries()
    bias = float(tuner.gradiend_encoder_bias["default"].detach().abs().sum())
    layers = tuner.gradiend_layers()
    bounds = []
    for i in range(len(test)):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        grads = batch_gradients(tuner, row, ["alternative"])["alternative"]
        magnitude = sum(float((layers[m].gradiend_encoder["default"].detach().double().abs()
                               * g.double().abs()).sum()) for m, g in grads.items())
        bounds.append(BF16_ULP * (scale * magnitude + bias) + 2 * n * EPS32 * scale * magnitude)
    bounds = torch.tensor(bounds, dtype=torch.float64)
    assert ((h16 - h32).abs() <= bounds).all(), ((h16 - h32).abs() - bounds).max()
    difference = (pre16 - pre32).abs()
    assert (difference <= bounds).all(), (difference - bounds).max()
    assert difference.max() > 0  # the storage rounding is visible before tanh...
    assert (bounds < 0.1 * pre32.abs()).all()  # ...and the bound is a real constraint (a tenth of the value)


@pytest.mark.filterwarnings("ignore:Merging adapter")  # some entries' steps are below bfloat16's resolution: expected
def test_merging_a_bf16_adapter_is_the_float32_formula_rounded_once():
    """``W' = rd_bf16(W + (lr / s) (f D + c))``. With ``f = 1``, ``lr / s = 4`` and bfloat16 inputs of similar magnitude
    every float32 step is exact (checked), so the merge must equal the exact value rounded once to bfloat16."""
    model = get_peft_model(MODEL_BUILDERS["llama"](0).to(torch.bfloat16), GradiendConfig(init_seed=0),
                           autocast_adapter_dtype=False)
    tuner = model.base_model
    tuner.gradiend_gradient_scale["default"].fill_(0.25)
    layers = tuner.gradiend_layers()
    expected = {}
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight.detach().double()
        decoder = layer.gradiend_decoder["default"].detach().double()[0]
        bias = layer.gradiend_decoder_bias["default"].detach().double()
        exact = weight + 4.0 * (1.0 * decoder + bias)
        assert torch.equal(exact.float().double(), exact), f"{name}: float32 would round here; pick other numbers"
        expected[name] = exact.to(torch.bfloat16)
    model.merge_adapter(feature_factor=1.0, lr=1.0)
    for name, layer in layers.items():
        assert torch.equal(layer.get_base_layer().weight, expected[name]), name
    model.unmerge_adapter()


def test_float16_masters_beyond_float16_range_stay_float32(caplog):
    model = get_peft_model(MODEL_BUILDERS["llama"](0).to(torch.float16), GradiendConfig(init_seed=0),
                           autocast_adapter_dtype=False)
    decoder = next(iter(model.base_model.gradiend_layers().values())).gradiend_decoder["default"]
    with caplog.at_level(logging.WARNING, logger="gradiend_peft.training.precision"):
        with float32_masters(model, "default") as storage:
            assert storage and decoder.dtype == torch.float32
            with torch.no_grad():
                decoder[0, 0, 0] = 1e6  # beyond float16's 65504
    assert decoder.dtype == torch.float32 and float(decoder.detach()[0, 0, 0]) == 1e6
    others = [p for p in adapter_params(model).values() if p is not decoder]
    assert {p.dtype for p in others} == {torch.float16}
    assert "beyond float16's range" in caplog.text


def test_stochastic_rounding_is_unbiased_and_keeps_sub_unit_updates():
    """Why the encoder is rounded stochastically: an update of a quarter unit rounds away to nearest, every time."""
    start = torch.tensor([1.0, -0.75, 3.0e-4]).to(torch.bfloat16).float().repeat(20000, 1)  # bfloat16 values
    ulp = (torch.nextafter(start.to(torch.bfloat16), torch.full_like(start, torch.inf).to(torch.bfloat16)).float()
           - start.to(torch.bfloat16).float()).abs()
    moved = start + 0.25 * ulp  # the masters moved by a quarter unit
    nearest = moved.to(torch.bfloat16).float()
    assert torch.equal(nearest, start)  # the update is gone
    rounded = stochastic_round(moved, torch.bfloat16, torch.Generator().manual_seed(0)).float()
    assert ((rounded - moved).abs() < ulp).all()  # within one unit
    assert set(rounded[:, 0].unique().tolist()) == {1.0, 1.0 + float(ulp[0, 0])}
    mean_error = (rounded - moved).mean(dim=0) / ulp[0]
    assert (mean_error.abs() < 0.02).all(), mean_error  # unbiased: the update survives on average
    exact = stochastic_round(start, torch.bfloat16, torch.Generator().manual_seed(0))
    assert torch.equal(exact.float(), start)  # representable values stay


def test_the_rounding_draws_are_not_the_initialisation_stream():
    """The adapter's initial values are drawn with torch.rand from init_seed, which the command line sets to the
    training seed: drawing the rounding decisions from the same stream lines the errors up with E (measured on
    SmolLM2: encodings moved by up to 1 instead of 0.005)."""
    init = torch.rand(1000, generator=torch.Generator().manual_seed(42))
    assert not torch.equal(torch.rand(1000, generator=rounding_generator(42)), init)
    assert torch.equal(torch.rand(5, generator=rounding_generator(42)), torch.rand(5, generator=rounding_generator(42)))


def test_a_run_resumes_from_a_bf16_checkpoint(tmp_path):
    """Checkpoints hold the bfloat16 adapter; resuming loads it into the float32 masters and trains on."""
    compact, _ = bf16_pair()
    train(compact, tmp_path, "run")
    checkpoint = tmp_path / "run" / "checkpoint-30"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    resumed, _ = bf16_pair()
    data = pairs("bert")
    args = arguments(tmp_path / "run", max_steps=60, eval_steps=30, save_strategy="no", learning_rate=1e-3,
                     restore_best_adapter=False)  # the best (step 30, tied at r = 1) would be the checkpoint again
    trainer = GradiendTrainer(model=resumed, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                              processing_class=tokenizer("bert"))
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 60
    after = adapter_params(resumed)
    assert {p.dtype for p in after.values()} == {torch.bfloat16}
    decoder = next(n for n in after if n.endswith("gradiend_decoder.default"))
    key = decoder.removesuffix(".default")
    assert not torch.equal(after[decoder], saved[key])  # it trained on from the checkpoint


class _Interrupted(Exception):
    pass


def test_an_interrupted_bf16_run_resumes_bit_for_bit(tmp_path):
    """Checkpoints carry the float32 masters beside the bfloat16 adapter, so an interrupted run resumed from its
    checkpoint holds the same masters at every later step as a run that was never interrupted, and stores the same
    adapter."""
    from transformers import TrainerCallback

    from gradiend_peft.training.precision import MASTERS_FILE

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 35:
                raise _Interrupted()

    class LastMasters(TrainerCallback):  # the float32 masters after the last step, before they are rounded
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == args.max_steps:
                self.masters = {n: p.detach().clone() for n, p in adapter_params(model).items()}

    data = pairs("bert")

    def run(name, callback):
        model, _ = bf16_pair()
        args = arguments(tmp_path / name, max_steps=60, eval_steps=30, save_strategy="steps", save_steps=30,
                         learning_rate=1e-3, restore_best_adapter=False)
        trainer = GradiendTrainer(model=model, args=args, train_dataset=data["train"],
                                  eval_dataset=data["validation"], processing_class=tokenizer("bert"),
                                  callbacks=[callback])
        return model, trainer

    last = LastMasters()
    whole, trainer = run("whole", last)
    trainer.train()
    expected = last.masters
    _, broken = run("broken", Stop())
    with pytest.raises(_Interrupted):
        broken.train()
    checkpoint = tmp_path / "broken" / "checkpoint-30"
    stored, masters = load_file(checkpoint / "adapter_model.safetensors"), load_file(checkpoint / MASTERS_FILE)
    assert {t.dtype for k, t in stored.items() if "gradient_scale" not in k} == {torch.bfloat16}  # the shared file
    assert {t.dtype for t in masters.values()} == {torch.float32}
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in masters.values())  # more than bf16 holds
    last = LastMasters()
    resumed, trainer = run("broken", last)
    trainer.train(resume_from_checkpoint=True)
    got = last.masters
    assert expected.keys() == got.keys() and {t.dtype for t in got.values()} == {torch.float32}
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    final_whole, final_resumed = adapter_params(whole), adapter_params(resumed)
    for name, tensor in final_whole.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(final_resumed[name], tensor), name
