"""GradiendTrainer, its arguments, batching, loss and GRADIEND callbacks on tiny models."""

import json
import os

import datasets
import pytest

import gradiend_peft
import torch
from peft import PeftModel
from transformers import EarlyStoppingCallback, TrainerCallback

from gradiend_peft.objective import batch_gradients
from gradiend_peft.objective import encode_rows, per_example_reconstruction_loss, reconstruction_loss
from gradiend_peft.objective import encoding_metrics, pearson
from gradiend_peft.training import (
    ClassGroupedBatchSampler,
    GradiendTrainer,
    GradiendTrainingArguments,
    adapter_snapshot,
    convergence_verdict,
    normalize_sign,
    restore_adapter_snapshot,
    train_with_restarts,
)
from gradiend_peft.training import arguments as arguments_module
from gradiend_peft.training import checks as checks_module
from gradiend_peft.training import trainer as trainer_module

from batches import causal_lm_batch, masked_lm_batch
from training_fixtures import arguments, one_thread, pairs, peft_model, tokenizer  # noqa: F401
from tiny import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path, family="bert", model=None, callbacks=None, **overrides):
    data = pairs(family)
    model = model if model is not None else peft_model(family)
    return GradiendTrainer(model=model, args=arguments(tmp_path, **overrides), train_dataset=data["train"],
                           eval_dataset=data["validation"], processing_class=tokenizer(family), callbacks=callbacks)


def _evaluations(trainer):
    return [e for e in trainer.state.log_history if "eval_correlation" in e]


def _adapter_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------ arguments
def test_arguments_default_to_the_reference(tmp_path):
    args = GradiendTrainingArguments(output_dir=str(tmp_path))
    assert args.learning_rate == 1e-5 and args.weight_decay == 1e-2 and args.num_train_epochs == 3
    assert args.lr_scheduler_type == "constant" and args.max_grad_norm == 0.0
    assert args.rows_per_gradient == 32 and args.per_device_train_batch_size == 32
    assert args.eval_strategy == "steps" and args.eval_steps == 250 and args.eval_on_start
    assert args.metric_for_best_model == "abs_correlation" and args.greater_is_better
    assert args.remove_unused_columns is False and args.per_example is False
    assert not hasattr(args, "num_seeds")  # train() trains once; restarts are train_with_restarts


def test_arguments_force_remove_unused_columns_off_and_refuse_fp16(tmp_path):
    forced = GradiendTrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True)
    assert forced.remove_unused_columns is False
    with pytest.raises(ValueError, match="fp16"):
        GradiendTrainingArguments(output_dir=str(tmp_path), fp16=True)
    with pytest.raises(ValueError, match="rows_per_gradient"):
        GradiendTrainingArguments(output_dir=str(tmp_path), rows_per_gradient=0)


def test_batch_sizes_follow_rows_per_gradient_and_are_never_overwritten(tmp_path):
    args = GradiendTrainingArguments(output_dir=str(tmp_path), rows_per_gradient=6)
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 6
    same = GradiendTrainingArguments(output_dir=str(tmp_path), rows_per_gradient=6, per_device_train_batch_size=6)
    assert same.per_device_train_batch_size == 6
    with pytest.raises(ValueError, match="per_device_train_batch_size=8 differs from rows_per_gradient=6"):
        GradiendTrainingArguments(output_dir=str(tmp_path), rows_per_gradient=6, per_device_train_batch_size=8)


def test_arguments_parse_from_the_command_line():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(GradiendTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "x", "--rows_per_gradient", "4", "--per_example", "true", "--truncate_long_rows", "true"]
    )
    assert args.rows_per_gradient == 4 and args.per_example and args.truncate_long_rows
    assert args.per_device_eval_batch_size == 4


# --------------------------------------------------------------------------------------------------- sampler
def test_sampler_groups_hold_one_class_in_round_robin():
    classes = ["M"] * 10 + ["F"] * 25
    sampler = ClassGroupedBatchSampler(classes, 4, seed=0, balance="none")
    groups = list(sampler)
    assert len(groups) == len(sampler) == 3 + 7
    assert all(len({classes[i] for i in g}) == 1 for g in groups)
    assert [classes[g[0]] for g in groups[:6]] == ["M", "F"] * 3
    assert sorted(i for g in groups for i in g) == list(range(35))


@pytest.mark.parametrize("balance,expected", [("oversample", 14), ("undersample", 6)])
def test_sampler_balances_classes(balance, expected):
    classes = ["M"] * 10 + ["F"] * 25
    sampler = ClassGroupedBatchSampler(classes, 4, seed=0, balance=balance)
    groups = list(sampler)
    assert len(groups) == len(sampler) == expected
    per_class = [classes[g[0]] for g in groups]
    assert per_class.count("M") == per_class.count("F") == expected // 2
    assert per_class == ["M", "F"] * (expected // 2)


def test_sampler_order_depends_only_on_seed_and_epoch():
    classes = ["M", "F"] * 20
    a = ClassGroupedBatchSampler(classes, 4, seed=1)
    b = ClassGroupedBatchSampler(classes, 4, seed=1)
    assert a.groups(0) == b.groups(0) and a.groups(3) == b.groups(3)
    assert a.groups(0) != a.groups(1)
    b.set_epoch(3)
    assert list(b) == a.groups(3)
    plain = ClassGroupedBatchSampler(classes, 4, shuffle=False, balance="none")
    assert plain.groups(0)[0] == [0, 2, 4, 6]


# ---------------------------------------------------------------------------------------- metrics & verdict
def test_encoding_metrics_and_verdict():
    enc = torch.tensor([0.9, 0.8, -0.7, -0.9, 0.1])
    expected = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0])
    m = encoding_metrics(enc, expected, {1.0: "M", -1.0: "F"})
    assert m["correlation"] == pytest.approx(pearson(enc, expected)) and m["correlation"] > 0.9
    assert m["accuracy"] == 1.0 and m["mean_M"] == pytest.approx(0.85) and m["mean_F"] == pytest.approx(-0.8)
    assert m["mean_neutral"] == pytest.approx(0.1)
    assert convergence_verdict(10, m, ["M", "F"]).converged
    not_yet = convergence_verdict(0, m, ["M", "F"])
    assert not not_yet.converged and "step 0" in not_yet.reasons[0]
    weak = convergence_verdict(5, {**m, "mean_F": 0.6}, ["M", "F"])
    assert not weak.converged and any("opposite" in r for r in weak.reasons)


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("family,learning_rate", [("bert", 1e-5), ("llama", 3e-5)])
def test_training_reaches_high_held_out_correlation(tmp_path, family, learning_rate):
    trainer = _trainer(tmp_path, family, learning_rate=learning_rate, num_train_epochs=6, eval_steps=30)
    trainer.train()
    summary = trainer.training_summary
    assert summary["converged"], summary["reasons"]
    assert summary["correlation"] >= 0.9 and summary["best_step"] > 0
    assert summary["class_means"]["M"] > 0.5 and summary["class_means"]["F"] < -0.5  # pair[0] encodes to +1
    test = trainer.evaluate(pairs(family)["test"], metric_key_prefix="test")  # never-seen template
    assert test["test_correlation"] >= 0.9
    assert not hasattr(trainer.model.peft_config["default"], "training_summary")  # the config is no run log


def test_trains_on_rows_mined_by_the_data_package(tmp_path):
    from gradiend_peft.data import mine_pairs

    from training_fixtures import TRAIN_TEMPLATES, VALIDATION_TEMPLATES, rows

    texts = [r["text"].replace("[MASK]", r["factual"]) for r in rows(TRAIN_TEMPLATES + VALIDATION_TEMPLATES)]
    mined = mine_pairs(texts, {"M": ["he"], "F": ["she"]}, split_ratios=(0.75, 0.25, 0.0), seed=0, progress=False)
    model = peft_model("bert")
    trainer = GradiendTrainer(model=model, args=arguments(tmp_path, num_train_epochs=6, eval_steps=30),
                              train_dataset=mined["train"], eval_dataset=mined["validation"],
                              processing_class=tokenizer("bert"))
    trainer.train()
    assert model.peft_config["default"].feature_classes == ["M", "F"]
    assert trainer.training_summary["converged"] and trainer.training_summary["correlation"] >= 0.9


def test_only_the_adapter_is_optimised_and_the_base_is_untouched(tmp_path):
    model = peft_model("bert")
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "gradiend_" not in n}
    trainer = _trainer(tmp_path, model=model, max_steps=3, eval_strategy="no", eval_on_start=False)
    trainer.train()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    adapter = _adapter_params(model)
    assert optimised == {id(p) for p in adapter.values()}
    assert "base_model.gradiend_encoder_bias.default" in adapter
    assert all(group["weight_decay"] == 1e-2 for group in trainer.optimizer.param_groups if group["params"])
    for name, param in model.named_parameters():
        if "gradiend_" not in name:
            assert torch.equal(param, base_before[name]), name


def test_encoder_weights_learn_at_the_fan_in_scaled_rate(tmp_path):
    trainer = _trainer(tmp_path, model=peft_model("llama"), family="llama", max_steps=1, eval_strategy="no")
    trainer.train()
    tuner = trainer.tuner
    encoders = {id(layer.gradiend_encoder["default"]) for layer in tuner.gradiend_layers().values()}
    rates = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    n = trainer._num_entries
    assert n == 18432
    assert all(rates[i] == pytest.approx(1e-5 * 16384 / n) for i in encoders)
    others = [i for i in rates if i not in encoders]
    assert others and all(rates[i] == 1e-5 for i in others)
    plain = _trainer(tmp_path / "plain", max_steps=1, eval_strategy="no", encoder_lr_fan_in=None)
    plain.train()
    assert {g["lr"] for g in plain.optimizer.param_groups if g["params"]} == {1e-5}


def test_loss_is_summed_for_backward_and_logged_as_mse(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, eval_strategy="no", eval_on_start=False)
    batch = masked_lm_batch()
    loss = trainer.compute_loss(trainer.model, batch)
    expected, _, n = reconstruction_loss(trainer.tuner, batch)
    torch.testing.assert_close(loss, expected)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    logged = trainer.training_step(trainer.model, batch)
    torch.testing.assert_close(logged, expected.detach() / n)


def test_gradient_accumulation_averages_the_row_groups(tmp_path):
    """One optimizer step over two accumulated groups uses the mean of the two groups' gradients."""
    seen = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer = _trainer(tmp_path, max_steps=1, gradient_accumulation_steps=2, eval_strategy="no",
                       eval_on_start=False, callbacks=[Grab()])
    model = trainer.model
    data = trainer.train_dataset
    groups = trainer._make_train_sampler().groups(0)[:2]
    trainer._ensure_calibrated()
    params = _adapter_params(model)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for group in groups:
        batch = trainer.data_collator([data[i] for i in group])
        loss, _, _ = reconstruction_loss(trainer.tuner, batch)
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            expected[n] += g / 2
    trainer.train()
    assert set(seen) == set(expected)
    for name in expected:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-6 * float(expected[name].abs().max()))


def test_gradient_scale_is_calibrated_on_the_first_training_group(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, eval_steps=1)
    tuner = trainer.tuner
    assert float(tuner.gradiend_gradient_scale["default"]) == 0
    first = trainer._make_train_sampler().groups(0)[0]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in first])
    grads = batch_gradients(tuner, batch, ["alternative"])["alternative"]
    rms = (sum(float(g.pow(2).sum()) for g in grads.values()) / trainer._num_entries) ** 0.5
    trainer.train()  # eval_on_start comes first and must not calibrate on a validation group
    assert float(tuner.gradiend_gradient_scale["default"]) == pytest.approx(1 / rms, rel=1e-5)


def test_defaults_train_at_any_size(tmp_path):
    """The summed loss over unit-RMS gradients makes the same lr work for n x 16 entries."""
    results = []
    for hidden in (32, 128):
        model = peft_model("bert")
        if hidden != 32:
            from peft import get_peft_model

            from gradiend_peft import GradiendConfig

            model = get_peft_model(tiny_bert(hidden=hidden), GradiendConfig(init_seed=0))
        trainer = _trainer(tmp_path / str(hidden), model=model, num_train_epochs=5, eval_steps=50)
        trainer.train()
        results.append((trainer._num_entries, trainer.training_summary["correlation"]))
    assert results[1][0] == 16 * results[0][0]
    assert all(correlation >= 0.9 for _, correlation in results), results


# ------------------------------------------------------------------------------------------ per-example mode
@pytest.mark.parametrize("family,source,target", [("bert", "alternative", "diff"), ("llama", "diff", "diff")])
def test_per_example_loss_equals_the_per_row_oracle(family, source, target):
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig
    from tiny import MODEL_BUILDERS

    model = get_peft_model(MODEL_BUILDERS[family]().double(), GradiendConfig(init_seed=0, source=source, target=target))
    model = model.double()
    tuner = model.base_model
    batch = masked_lm_batch() if family == "bert" else causal_lm_batch()
    reconstruction_loss(tuner, batch)  # calibrates s
    s = tuner.gradient_scale()
    loss, latents, _ = per_example_reconstruction_loss(tuner, batch)
    params = list(_adapter_params(model).values())
    rows = batch["input_ids"].shape[0]
    oracle = 0
    for i in range(rows):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        row_loss, row_latent, _ = reconstruction_loss(tuner, row)
        energy = sum(float((s * g).pow(2).sum()) for g in batch_gradients(tuner, row, [target])[target].values())
        oracle = oracle + (row_loss - energy) / rows
        torch.testing.assert_close(latents[i], row_latent, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, oracle, rtol=1e-9, atol=1e-9)
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(oracle, params)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * float(want.abs().max()))


def test_per_example_training_reaches_high_correlation(tmp_path):
    trainer = _trainer(tmp_path, per_example=True, num_train_epochs=6, eval_steps=30)
    trainer.train()
    assert trainer.training_summary["converged"], trainer.training_summary["reasons"]
    assert trainer.training_summary["correlation"] >= 0.9


# ----------------------------------------------------------------------------------------- sign normalisation
def test_sign_flip_keeps_the_function_and_negates_the_encoding():
    model = peft_model("bert")
    tuner = model.base_model
    batch = masked_lm_batch()
    params = list(_adapter_params(model).values())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    reconstruction_loss(tuner, batch)[0].backward()
    optimizer.step()  # the optimizer now has first moments to mirror
    moments = {id(p): optimizer.state[p]["exp_avg"].clone() for p in params}
    c_before = {n: p.detach().clone() for n, p in model.named_parameters() if "decoder_bias" in n}
    loss_before, latent_before, _ = reconstruction_loss(tuner, batch)
    rows_before = encode_rows(tuner, batch).detach()
    decoded_before = tuner.decode(0.3)

    assert normalize_sign(tuner, "default", optimizer) == "weights"
    loss_after, latent_after, _ = reconstruction_loss(tuner, batch)
    torch.testing.assert_close(loss_after, loss_before)  # the same reconstruction of the same gradients
    torch.testing.assert_close(latent_after, -latent_before)
    torch.testing.assert_close(encode_rows(tuner, batch).detach(), -rows_before)
    decoded_after = tuner.decode(-0.3)
    for name in decoded_before:
        torch.testing.assert_close(decoded_after[name], decoded_before[name])
    for name, param in model.named_parameters():
        if "decoder_bias" in name:
            assert torch.equal(param, c_before[name])  # the decoder bias is not negated
    flipped = {id(tuner.gradiend_encoder_bias["default"])}
    for layer in tuner.gradiend_layers().values():
        flipped |= {id(layer.gradiend_encoder["default"]), id(layer.gradiend_decoder["default"])}
    for p in params:
        expected = -moments[id(p)] if id(p) in flipped else moments[id(p)]
        torch.testing.assert_close(optimizer.state[p]["exp_avg"], expected)


def test_sign_flip_mirrors_the_training_trajectory(tmp_path):
    """A run that flips (at the step-0 evaluation) ends with the mirror image of a run that does not."""
    plain = _trainer(tmp_path / "a", max_steps=12, eval_steps=6, sign_normalization=False, restore_best_adapter=False)
    plain.train()
    flipping = _trainer(tmp_path / "b", max_steps=12, eval_steps=6, restore_best_adapter=False)
    flipping.train()
    assert flipping._signs.flips == [0] and plain._signs.flips == []
    a, b = _adapter_params(plain.model), _adapter_params(flipping.model)
    for name in a:
        sign = 1.0 if "decoder_bias" in name else -1.0
        torch.testing.assert_close(b[name], sign * a[name], rtol=1e-4, atol=1e-6)
    first = _evaluations(flipping)[0]
    assert first["eval_correlation"] < 0 and _evaluations(flipping)[-1]["eval_correlation"] > 0
    flips = json.loads((tmp_path / "b" / "gradiend_training_history.json").read_text())["sign_flips"]
    assert flips == [{"step": 0, "what": "weights"}]


def test_non_odd_activation_flips_class_signs_instead():
    model = peft_model("bert", activation="sigmoid", feature_classes=["M", "F"])
    before = {n: p.detach().clone() for n, p in _adapter_params(model).items()}
    assert normalize_sign(model.base_model, "default") == "class_signs"
    assert model.peft_config["default"].class_signs == {"M": -1.0, "F": 1.0}
    assert all(torch.equal(p, before[n]) for n, p in _adapter_params(model).items())


# -------------------------------------------------------------------------------- best adapter & convergence
def test_best_adapter_is_restored_and_is_the_best(tmp_path):
    """The adapter is wrecked after step 20; the restored adapter is the one of the best evaluation."""
    snapshots = {}

    class Wreck(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            snapshot = adapter_snapshot(model.base_model, "default")
            snapshots[state.global_step] = (metrics["eval_abs_correlation"], snapshot)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 21:
                with torch.no_grad():
                    for layer in model.base_model.gradiend_layers().values():
                        layer.gradiend_encoder["default"].normal_()

    trainer = _trainer(tmp_path, max_steps=40, eval_steps=10, callbacks=[Wreck()])
    trainer.train()
    best_step = max(snapshots, key=lambda step: (snapshots[step][0], -step))
    assert best_step in (10, 20) and trainer.training_summary["best_step"] == best_step
    final = adapter_snapshot(trainer.tuner, "default")
    for name, tensor in snapshots[best_step][1].items():
        assert torch.equal(final[name], tensor), name
    again = trainer.evaluate()
    assert again["eval_abs_correlation"] == pytest.approx(snapshots[best_step][0], abs=1e-6)


def test_load_best_model_at_end_uses_the_trainers_best_checkpoint(tmp_path):
    class Wreck(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 21:
                with torch.no_grad():
                    for layer in model.base_model.gradiend_layers().values():
                        layer.gradiend_encoder["default"].normal_()

    trainer = _trainer(tmp_path, max_steps=40, eval_steps=10, save_strategy="steps", save_steps=10,
                       load_best_model_at_end=True, callbacks=[Wreck()])
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith(("checkpoint-10", "checkpoint-20"))
    assert trainer.evaluate()["eval_abs_correlation"] == pytest.approx(trainer.state.best_metric, abs=1e-6)


def test_non_convergence_is_reported_and_saved(tmp_path):
    trainer = _trainer(tmp_path, learning_rate=0.0, max_steps=10, eval_steps=5)
    trainer.train()
    summary = trainer.training_summary
    assert not summary["converged"] and summary["best_step"] == 0
    assert any("step 0" in reason for reason in summary["reasons"])
    gradiend_peft.save_adapter(trainer.model, str(tmp_path / "adapter"), training_summary=summary)
    saved = json.loads((tmp_path / "adapter" / "gradiend_training_summary.json").read_text())
    assert saved["converged"] is False and "training_summary" not in json.loads(
        (tmp_path / "adapter" / "adapter_config.json").read_text())  # the adapter's config is no run log
    history = json.loads((tmp_path / "gradiend_training_history.json").read_text())
    assert [e["step"] for e in history["evaluations"]] == [0, 5, 10]
    assert history["summary"]["converged"] is False


def test_saved_adapter_carries_the_verdict_and_reloads(tmp_path):
    trainer = _trainer(tmp_path, num_train_epochs=6, eval_steps=30)
    trainer.train()
    gradiend_peft.save_adapter(trainer.model, str(tmp_path / "final"), training_summary=trainer.training_summary)
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path / "final")
    assert json.loads((tmp_path / "final" / "gradiend_training_summary.json").read_text())["converged"]
    assert "converged" in (tmp_path / "final" / "README.md").read_text()
    assert reloaded.peft_config["default"].feature_classes == ["M", "F"]
    torch.testing.assert_close(encode_rows(reloaded.base_model, masked_lm_batch()),
                               encode_rows(trainer.tuner, masked_lm_batch()))


# ------------------------------------------------------------------------------------------------- seeds
def test_train_trains_once(tmp_path):
    trainer = _trainer(tmp_path, learning_rate=0.0, max_steps=4, eval_steps=2)
    trainer.train()
    assert trainer.state.global_step == 4 and not os.path.isdir(tmp_path / "seed-43")
    assert not any(name.startswith("seed-") for name in os.listdir(tmp_path))


def test_seeds_are_tried_until_one_converges_and_the_best_is_kept(tmp_path):
    trainer = _trainer(tmp_path, learning_rate=0.0, max_steps=4, eval_steps=2)
    train_with_restarts(trainer, num_seeds=2)
    report = trainer.restart_report
    assert [a.seed for a in report.attempts] == [42, 43] and not any(a.converged for a in report.attempts)
    best = max(report.attempts, key=lambda a: abs(a.correlation))
    assert report.selected_seed == best.seed
    assert trainer.training_summary["attempts"]["selected_seed"] == best.seed
    assert os.path.isdir(tmp_path / "seed-43") and (tmp_path / "gradiend_seed_report.json").is_file()
    # the second attempt started from a fresh initialisation with its own seed; the config names the kept one
    assert report.attempts[1].summary["init_seed"] == 43 and report.attempts[0].summary["init_seed"] == 0
    assert trainer.model.peft_config["default"].init_seed == best.summary["init_seed"]
    assert adapter_snapshot(trainer.tuner, "default")["base_model.gradiend_encoder_bias"].shape == (1,)

    converging = _trainer(tmp_path / "c", num_train_epochs=6, eval_steps=30)
    train_with_restarts(converging, num_seeds=3)
    assert [a.seed for a in converging.restart_report.attempts] == [42]  # first_converged stops at once
    assert converging.training_summary["converged"]


def test_finished_attempts_are_not_rerun_on_resume(tmp_path):
    train_with_restarts(_trainer(tmp_path, learning_rate=0.0, max_steps=4, eval_steps=2), num_seeds=2)
    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    again = _trainer(tmp_path, learning_rate=0.0, max_steps=4, eval_steps=2, callbacks=[Count()])
    train_with_restarts(again, num_seeds=2, resume_from_checkpoint=True)
    assert steps == [] and [a.seed for a in again.restart_report.attempts] == [42, 43]


# ------------------------------------------------------------------------------------------- user callbacks
def test_user_callbacks_see_the_training(tmp_path):
    class Recorder(TrainerCallback):
        def __init__(self):
            self.events = []
            self.metrics = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.events.append("train_begin")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.events.append("evaluate")
            self.metrics.append(dict(metrics))

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.events.append("log")

        def on_save(self, args, state, control, **kwargs):
            self.events.append("save")

        def on_train_end(self, args, state, control, **kwargs):
            self.events.append("train_end")

    recorder = Recorder()
    trainer = _trainer(tmp_path, max_steps=20, eval_steps=10, save_strategy="steps", save_steps=10,
                       callbacks=[recorder])
    trainer.train()
    assert recorder.events[0] == "train_begin" and recorder.events[-1] == "train_end"
    assert recorder.events.count("evaluate") == 3 and recorder.events.count("save") == 2
    assert all("eval_correlation" in m and "eval_mean_M" in m for m in recorder.metrics)
    assert recorder.metrics[0].get("eval_sign_flipped") == 1.0  # GRADIEND's callbacks run first
    assert os.path.isfile(tmp_path / "checkpoint-20" / "gradiend_best_adapter.safetensors")


def test_early_stopping_on_the_correlation(tmp_path):
    stopper = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=0.5)
    trainer = _trainer(tmp_path, max_steps=100, eval_steps=5, callbacks=[stopper])
    trainer.train()
    # the correlation cannot improve by 0.5 twice in a row: training stops after three evaluations
    assert trainer.state.global_step == 15
    assert [e["step"] for e in _evaluations(trainer)] == [0, 5, 10, 15]


def test_several_validation_sets_the_first_decides(tmp_path):
    data = pairs("bert")
    trainer = GradiendTrainer(model=peft_model("bert"), args=arguments(tmp_path, max_steps=20, eval_steps=10),
                              train_dataset=data["train"], processing_class=tokenizer("bert"),
                              eval_dataset={"validation": data["validation"], "test": data["test"]})
    trainer.train()
    assert trainer.args.metric_for_best_model == "eval_validation_abs_correlation"
    for name in ("validation", "test"):
        last = [e for e in trainer.state.log_history if f"eval_{name}_correlation" in e][-1]
        assert last[f"eval_{name}_correlation"] > 0.9
    assert trainer.training_summary["converged"]


# --------------------------------------------------------------------------------------------- predictions
def test_predict_returns_row_encodings_in_dataset_order(tmp_path):
    trainer = _trainer(tmp_path, max_steps=5, eval_strategy="no", eval_on_start=False)
    trainer.train()
    test = pairs("bert")["test"]
    output = trainer.predict(test)
    collate = trainer.data_collator
    direct = encode_rows(trainer.tuner, collate([test[i] for i in range(len(test))])).detach().numpy()
    assert output.predictions.shape == (len(test), 1)
    torch.testing.assert_close(torch.tensor(output.predictions), torch.tensor(direct, dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)
    assert list(output.label_ids) == list(test["label"])
    assert "test_correlation" in output.metrics


# ------------------------------------------------------------------------------------------ mixed precision
def test_bf16_base_with_fp32_adapter_trains(tmp_path):
    model = peft_model("bert", dtype=torch.bfloat16)
    assert model.get_base_model().bert.encoder.layer[0].output.dense.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in _adapter_params(model).values())
    trainer = _trainer(tmp_path, model=model, num_train_epochs=6, eval_steps=30)
    trainer.train()
    assert trainer.training_summary["correlation"] >= 0.9
    assert all(p.dtype == torch.float32 for p in _adapter_params(model).values())


def test_bf16_autocast_runs_the_base_pass_only(tmp_path):
    trainer = _trainer(tmp_path, bf16=True, max_steps=30, eval_steps=30)
    dtypes = set()
    base = trainer.model.get_base_model()
    hook = base.bert.encoder.layer[0].output.dense.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    trainer.train()
    hook.remove()
    assert dtypes == {torch.bfloat16}
    assert trainer.training_summary["correlation"] >= 0.9


def test_clear_errors_for_unsupported_precision(tmp_path, monkeypatch):
    model = peft_model("bert")
    for p in _adapter_params(model).values():
        p.data = p.data.to(torch.float8_e5m2)
    with pytest.raises(ValueError, match="torch.float8_e5m2.*trains in float32"):
        _trainer(tmp_path, model=model)
    monkeypatch.setattr(checks_module, "bf16_supported", lambda kind: False)
    model = peft_model("bert", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no bf16 support"):
        _trainer(tmp_path, model=model)
    monkeypatch.setattr(arguments_module, "_bf16_device_kind", lambda: "cuda")
    monkeypatch.setattr(arguments_module, "bf16_supported", lambda kind: False)
    with pytest.raises(ValueError, match="Ampere"):
        GradiendTrainingArguments(output_dir=str(tmp_path), bf16=True)


# ---------------------------------------------------------------------------------------------- refusals
def test_trainer_refuses_what_it_cannot_train(tmp_path):
    data = pairs("bert")
    with pytest.raises(TypeError, match="get_peft_model"):
        GradiendTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=data["train"],
                        eval_dataset=data["validation"], processing_class=tokenizer())
    with pytest.raises(ValueError, match="eval_dataset"):
        GradiendTrainer(model=peft_model(), args=arguments(tmp_path), train_dataset=data["train"],
                        processing_class=tokenizer())
    with pytest.raises(ValueError, match="processing_class"):
        GradiendTrainer(model=peft_model(), args=arguments(tmp_path), train_dataset=data["train"],
                        eval_dataset=data["validation"])
    tokenised = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "label": [1.0]})
    with pytest.raises(ValueError, match="not pre-tokenised"):
        GradiendTrainer(model=peft_model(), args=arguments(tmp_path, eval_strategy="no"), train_dataset=tokenised,
                        processing_class=tokenizer())
    with pytest.raises(ValueError, match="feature_classes"):
        GradiendTrainer(model=peft_model(feature_classes=["A", "B"]), args=arguments(tmp_path),
                        train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tokenizer())
    model = peft_model()
    model.get_base_model().bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="only the GRADIEND adapter"):
        GradiendTrainer(model=model, args=arguments(tmp_path), train_dataset=data["train"],
                        eval_dataset=data["validation"], processing_class=tokenizer())


def test_snapshot_round_trip():
    model = peft_model("bert")
    tuner = model.base_model
    snap = adapter_snapshot(tuner, "default")
    with torch.no_grad():
        for p in _adapter_params(model).values():
            p.add_(1.0)
    restore_adapter_snapshot(tuner, "default", snap)
    assert all(torch.equal(adapter_snapshot(tuner, "default")[k], v) for k, v in snap.items())
    assert "base_model.gradiend_gradient_scale" in snap and "base_model.gradiend_encoder_bias" in snap
