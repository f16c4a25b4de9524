"""Module-sharded training (``adapter_shards=2``, CPU/gloo processes under ``accelerate launch``): the same adapter as one
process, saved as one file per shard plus an index that loads and merges as one adapter, about half the adapter and
optimizer bytes per process, and three k-element all-reduces per step.

This file is also the training script: ``python tests/test_training_sharded.py OUT [--shards P] [--accumulation A]
[--max-steps N --save-steps S] [--stall-at STEP] [--resume] [--per-example] [--hidden H]`` (``--hidden``: a wider
BERT, for measuring memory). Each process writes ``OUT/process-<rank>.json`` (its
all-reduce calls per step, adapter and optimizer bytes, peak RSS) and ``OUT/shard-<rank>.safetensors`` (its own
tensors), and the trainer saves the adapter into ``OUT/final``.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import free_port, subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))
LATENT = 1


def _run(out_dir: str, shards: int, accumulation: int, max_steps: int, save_steps: int, stall_at: int,
         resume: bool, per_example: bool = False, hidden: int = 32) -> None:
    """Trains (see the module docstring); before training, process 0 saves the untrained adapter as one file into
    ``OUT/final`` beside a file of the user's, which the sharded save at the end must replace and keep."""
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"pid-{os.environ.get('RANK', '0')}"), "w") as handle:
        handle.write(str(os.getpid()))  # the test kills the processes it started by their ids
    import torch.distributed as dist
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from gradiend_peft.training import GradiendTrainer
    from gradiend_peft.training.sharding import adapter_bytes
    from training_fixtures import arguments, pairs, peft_model, tokenizer

    calls, phase = [], {"step": None}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):  # the edge of the world: every all-reduce passes here
        group = kwargs.get("group", args[1] if len(args) > 1 else None)
        calls.append({"step": phase["step"], "numel": tensor.numel(), "group_size": dist.get_world_size(group),
                      "dtype": str(tensor.dtype)})
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce

    class Phase(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phase["step"] = state.global_step + 1

        def on_step_end(self, args, state, control, **kwargs):
            phase["step"] = None
            if state.global_step == stall_at:
                print("STALLED", flush=True)
                time.sleep(600)

    data = pairs("bert")
    overrides = dict(max_steps=max_steps, save_strategy="steps", save_steps=save_steps, save_total_limit=None,
                     eval_steps=5) if max_steps else dict(num_train_epochs=1, eval_steps=3)
    args = arguments(out_dir, learning_rate=1e-4, gradient_accumulation_steps=accumulation, adapter_shards=shards,
                     per_example=per_example, **overrides)
    if hidden == 32:
        model = peft_model("bert", latent_dim=LATENT)
    else:  # a wider model, for measuring memory (``--hidden``)
        from peft import get_peft_model

        from gradiend_peft import GradiendConfig
        from tiny import tiny_bert

        model = get_peft_model(tiny_bert(0, hidden=hidden), GradiendConfig(latent_dim=LATENT, init_seed=0))
    final = os.path.join(out_dir, "final")
    if args.process_index == 0 and not resume:
        from gradiend_peft import save_adapter

        save_adapter(model, final)  # an old adapter, as one file
        with open(os.path.join(final, "notes.txt"), "w") as handle:
            handle.write("mine")
    trainer = GradiendTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                              processing_class=tokenizer("bert"), callbacks=[Phase()])
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(final)  # on every process: a sharded save is collective
    rank = trainer.args.process_index
    tuner = trainer.model.base_model
    own = tuner.adapter_state_dict(trainer.adapter_name)
    save_file({k: v.detach().contiguous() for k, v in own.items()}, os.path.join(out_dir, f"shard-{rank}.safetensors"))
    report = {
        "world_size": trainer.args.world_size, "global_step": output.global_step, "calls": calls,
        "bytes": adapter_bytes(tuner.adapter_parameters(trainer.adapter_name), trainer.optimizer),
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_kb": int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS"))),
        "evaluations": [e for e in trainer.state.log_history if "eval_correlation" in e],
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }
    with open(os.path.join(out_dir, f"process-{rank}.json"), "w") as handle:
        json.dump(report, handle)
    trainer.end_training()
    print("DONE", flush=True)


# ---------------------------------------------------------------------------------------------- launching
def _command(processes: int, out: str, *options: str) -> list[str]:
    script = os.path.abspath(__file__)
    if processes == 1:
        return [sys.executable, script, out, *options]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs the processes use CPU and gloo
    return [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), script,
            out, *options]


def _start(processes: int, out: str, *options: str) -> subprocess.Popen:
    # a session of its own, so that the launcher and its worker processes can be killed together
    return subprocess.Popen(_command(processes, out, *options), env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(process: subprocess.Popen, timeout: int = 400) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out + err)[-4000:]


def _reports(folder: str) -> list[dict]:
    names = sorted(n for n in os.listdir(folder) if n.startswith("process-"))
    return [json.load(open(os.path.join(folder, n))) for n in names]


def _kill(process: subprocess.Popen, folder: str) -> None:
    """SIGKILL for the workers (torchrun starts each in a session of its own; they wrote their ids), then for the
    launcher's session."""
    for name in [n for n in os.listdir(folder) if n.startswith("pid-")]:
        try:
            os.kill(int(open(os.path.join(folder, name)).read()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def _shard_tensors(folder: str) -> list[dict]:
    from safetensors.torch import load_file

    names = sorted(n for n in os.listdir(folder) if n.startswith("shard-"))
    return [load_file(os.path.join(folder, n)) for n in names]


# ---------------------------------------------------------------------------------------------- the tests
def _sharding_files() -> set[str]:
    import gradiend_peft.objective.sharded
    import gradiend_peft.training.sharded_trainer
    import gradiend_peft.training.sharding

    modules = (gradiend_peft.objective.sharded, gradiend_peft.training.sharded_trainer, gradiend_peft.training.sharding)
    return {module.__file__ for module in modules}


def _calls_into(files: set[str], work) -> list[str]:
    """The functions of ``files`` that Python enters while ``work()`` runs (a profile hook sees every call)."""
    import threading

    entered = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename in files:  # the file name the module's code was compiled with
            entered.append(frame.f_code.co_name)

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return entered


@pytest.mark.parametrize("per_example", [False, True])
def test_one_shard_never_enters_sharding_code(tmp_path, per_example):
    sys.path.insert(0, HERE)
    from gradiend_peft.training import GradiendTrainer
    from gradiend_peft.training.sharded_trainer import ShardedTraining
    from gradiend_peft.training.sharding import plan_for
    from training_fixtures import arguments, pairs, peft_model, tokenizer

    data = pairs("bert")
    few = data["validation"].select([0, 1, 2, 3, 6, 7, 8, 9])  # 4 rows of each class
    args = arguments(tmp_path, max_steps=2, eval_steps=2, eval_on_start=False, save_strategy="steps", save_steps=2,
                     per_example=per_example, rows_per_gradient=4)
    model = peft_model("bert", latent_dim=LATENT)
    trainer = GradiendTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=few,
                              processing_class=tokenizer("bert"))
    assert type(trainer) is GradiendTrainer and not isinstance(trainer, ShardedTraining)
    files = _sharding_files()
    entered = _calls_into(files, lambda: (trainer.train(), trainer.predict(few),
                                          trainer.save_model(str(tmp_path / "final"))))
    assert trainer.state.global_step == 2 and entered == []
    # the hook does see sharding code when it runs
    assert {"plan_for", "balanced"} <= set(_calls_into(files, lambda: plan_for(model.peft_config["default"], 2)))


@pytest.fixture
def one_process_group(tmp_path):
    """A process group of this process alone (gloo): the sharded objective's all-reduces are then sums over one."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _saved_bytes(work):
    """``(bytes autograd saved for a backward pass while work() ran, work's result)``: the size of the graphs built,
    independent of timing (the gradient pass over the base model saves its activations; anything more is kept
    alive until the result is dropped)."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = work()
    return sum(saved), result


def test_the_sharded_row_encoding_keeps_no_more_per_row_than_the_plain_one(one_process_group):
    """The probes enter the sharded encoding detached, as the plain one's: no graph of the per-module dot products
    (each module's projection, ``B T k out`` numbers) is built. One function serves both, and both are measured."""
    sys.path.insert(0, HERE)
    from batches import masked_lm_batch
    from gradiend_peft.objective import encode_rows
    from gradiend_peft.objective.sharded import Shard
    from training_fixtures import peft_model

    tuner = peft_model("bert", latent_dim=2).base_model
    full = masked_lm_batch()
    measured = {}
    for rows in (2, 4, 8):
        batch = {key: value[:rows] for key, value in full.items()}
        with torch.enable_grad():  # as the trainer's evaluation runs it
            plain, expected = _saved_bytes(lambda: encode_rows(tuner, batch))
            sharded, got = _saved_bytes(lambda: encode_rows(tuner, batch, shard=Shard(one_process_group)))
        assert torch.equal(got, expected) and not got.requires_grad
        measured[rows] = (plain, sharded)
    assert all(plain == sharded for plain, sharded in measured.values()), measured
    per_row = [(measured[8][i] - measured[2][i]) / 6 for i in (0, 1)]
    assert per_row[0] == per_row[1] > 0, measured


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (the reference) and two sharded processes, run side by side on the same rows."""
    one, two = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("two"))
    single, double = _start(1, one), _start(2, two, "--shards", "2")
    _finish(double)
    _finish(single)
    return one, two


def _load(folder: str):
    from gradiend_peft import load_gradiend_model
    from tiny import MODEL_BUILDERS

    return load_gradiend_model(MODEL_BUILDERS["bert"](0), os.path.join(folder, "final"))


def test_two_shards_train_the_same_adapter_as_one_process(runs):
    one, two = runs
    (single,), shards = _reports(one), _reports(two)
    assert single["world_size"] == 1 and [r["world_size"] for r in shards] == [2, 2]
    assert single["global_step"] == shards[0]["global_step"] == shards[1]["global_step"] == 10
    expected = _load(one).base_model.adapter_state_dict()
    got = _load(two).base_model.adapter_state_dict()
    assert set(got) == set(expected)
    # The only difference is the order of float32 additions: the k-vector sum of per-module dot products runs over
    # each shard and then across the all-reduce instead of over all modules in model order (and the encoder bias'
    # gradient likewise). That perturbs h by a few ulps; AdamW divides each step by its own running RMS, so a
    # parameter moves by lr (1 +- ~1e-6) per step and ends a few ulps (|value| ~ 1e-2, ulp ~ 1e-9) from the
    # one-process value after 10 steps. Observed: at most 1 ulp (9.3e-10).
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-8, msg=name)
    correlations = [[round(e["eval_correlation"], 5) for e in r["evaluations"]] for r in (single, *shards)]
    assert correlations[0] == correlations[1] == correlations[2]
    assert correlations[0][0] < 0 < correlations[0][-1]  # a sign flip happened, identically on every shard
    assert shards[0]["losses"] == pytest.approx(single["losses"], rel=1e-6)  # logged: sum over shards / total n


def test_two_shards_train_the_same_per_example_adapter_as_one_process(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    single, double = _start(1, one, "--per-example"), _start(2, two, "--shards", "2", "--per-example")
    _finish(double)
    _finish(single)
    expected = _load(one).base_model.adapter_state_dict()
    got = _load(two).base_model.adapter_state_dict()
    for name, value in expected.items():  # tolerance: see test_two_shards_train_the_same_adapter_as_one_process
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-8, msg=name)
    correlations = [[round(e["eval_correlation"], 5) for e in r["evaluations"]] for r in _reports(one) + _reports(two)]
    assert correlations[0] == correlations[1] == correlations[2]


def test_the_sharded_save_replaces_an_old_adapter_and_keeps_other_files(runs):
    _, two = runs
    final = os.path.join(two, "final")
    names = sorted(os.listdir(final))
    assert "adapter_model.safetensors" not in names and "notes.txt" in names
    assert open(os.path.join(final, "notes.txt")).read() == "mine"
    assert {"adapter_model-00001-of-00002.safetensors", "adapter_model-00002-of-00002.safetensors",
            "adapter_model.safetensors.index.json", "adapter_config.json", "README.md"} <= set(names)
    assert not [n for n in names if n.startswith(".gradiend")]


def test_the_sharded_adapter_loads_as_one_equal_to_the_shards_and_merges_by_the_formula(runs):
    _, two = runs
    loaded = _load(two)
    tensors = loaded.base_model.adapter_state_dict()
    shards = _shard_tensors(two)
    assert set(tensors) == {name for shard in shards for name in shard}
    for shard in shards:
        for name, value in shard.items():
            assert torch.equal(tensors[name], value), name
    tuner = loaded.base_model
    scale = float(tuner.gradiend_gradient_scale["default"])
    feature_factor, lr = 0.7, 3.0
    expected = {}
    for module, layer in tuner.gradiend_layers("default").items():
        decoder = layer.gradiend_decoder["default"][0]
        bias = layer.gradiend_decoder_bias["default"]
        weight = layer.get_base_layer().weight.detach()
        expected[module] = weight + (feature_factor * decoder + bias) * (lr / scale)
    merged = loaded.merge_and_unload(feature_factor=feature_factor, lr=lr)
    modules = dict(merged.named_modules())
    for module, weight in expected.items():
        torch.testing.assert_close(modules[module].weight, weight, rtol=0, atol=0, msg=module)


def test_each_shard_holds_half_the_adapter_and_optimizer_bytes(runs):
    one, two = runs
    (single,), shards = _reports(one), _reports(two)
    whole = single["bytes"]["adapter"] + single["bytes"]["optimizer"]
    for report in shards:
        assert report["bytes"]["adapter"] + report["bytes"]["optimizer"] <= 1.1 * whole / 2, report["bytes"]
    print(f"adapter + AdamW bytes: one process {whole}, per shard "
          f"{[r['bytes']['adapter'] + r['bytes']['optimizer'] for r in shards]}; peak RSS (KB): one process "
          f"{single['max_rss_kb']}, shards {[r['max_rss_kb'] for r in shards]}")


def test_a_step_all_reduces_k_numbers_each_way_for_h_and_once_for_the_bias(runs):
    one, two = runs
    (single,) = _reports(one)
    assert single["calls"] == []  # one process: no collective at all
    for report in _reports(two):
        steps = {}
        for call in report["calls"]:
            steps.setdefault(call["step"], []).append((call["numel"], call["group_size"]))
        for step in range(1, 11):
            # h forward (k), h's gradient backward (k), the encoder bias' gradient + loss + squared norm (k + 2)
            assert steps[step] == [(LATENT, 2), (LATENT, 2), (LATENT + 2, 2)], (step, steps[step])
        # outside the steps: the evaluations, and the calibration of the gradient scale (once: two float64 numbers)
        calibrations = [c for c in report["calls"] if c["dtype"] == "torch.float64" and c["step"] is None]
        assert [(c["numel"], c["group_size"]) for c in calibrations] == [(2, 2)]


def test_a_sharded_run_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    steps = ["--shards", "2", "--max-steps", "20", "--save-steps", "10"]
    uninterrupted = _start(2, whole, *steps)
    victim = _start(2, broken, *steps, "--stall-at", "12")
    try:
        deadline = time.time() + 300
        for line in victim.stdout:
            if "STALLED" in line or time.time() > deadline:
                break
        assert victim.poll() is None, "the run to interrupt ended early"
        checkpoint = os.path.join(broken, "checkpoint-10")
        assert sorted(n for n in os.listdir(checkpoint) if "-of-" in n) == [
            "adapter_model-00001-of-00002.safetensors", "adapter_model-00002-of-00002.safetensors",
            "gradiend_best_adapter-00001-of-00002.safetensors", "gradiend_best_adapter-00002-of-00002.safetensors",
            "optimizer-shard-00001-of-00002.pt", "optimizer-shard-00002-of-00002.pt"]
        assert not os.path.isdir(os.path.join(broken, "checkpoint-20"))
    finally:
        _kill(victim, broken)
    _finish(_start(2, broken, *steps, "--resume"))
    _finish(uninterrupted)

    expected = _load(whole).base_model.adapter_state_dict()
    got = _load(broken).base_model.adapter_state_dict()
    assert set(expected) == set(got)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name  # the same computations in the same order: bit for bit
    histories = [json.load(open(os.path.join(f, "gradiend_training_history.json"))) for f in (whole, broken)]
    assert [e["step"] for e in histories[0]["evaluations"]] == [e["step"] for e in histories[1]["evaluations"]] \
        == [0, 5, 10, 15, 20]
    for key in ("converged", "best_step", "global_step", "sign_flips", "correlation"):
        assert histories[0]["summary"][key] == histories[1]["summary"][key], key


@pytest.mark.slow
def test_two_shards_times_two_replicas_train_the_same_adapter_as_one_process_accumulating_two(tmp_path):
    one, four = str(tmp_path / "one"), str(tmp_path / "four")
    single, quad = _start(1, one, "--accumulation", "2"), _start(4, four, "--shards", "2")
    _finish(quad, timeout=600)
    _finish(single)
    (reference,), processes = _reports(one), _reports(four)
    assert [r["global_step"] for r in processes] == [reference["global_step"]] * 4 == [5] * 4
    expected = _load(one).base_model.adapter_state_dict()
    got = _load(four).base_model.adapter_state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-8, msg=name)
    own = 3 * 16384 // 2 + LATENT  # E, D (k = 1) and c of half the n = 16384 entries, and the encoder bias
    for report in processes:
        steps = {}
        for call in report["calls"]:
            steps.setdefault(call["step"], []).append((call["numel"], call["group_size"]))
        for step in range(1, 6):
            # per replica: h both ways over the shard group, then this shard's gradients averaged over its replica
            # group, then the encoder bias' gradient over the shard group
            assert steps[step] == [(LATENT, 2), (LATENT, 2), (own, 2), (LATENT + 2, 2)], (step, steps[step])


if __name__ == "__main__":
    def option(name: str, default: int) -> int:
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default

    _run(sys.argv[1], shards=option("--shards", 1), accumulation=option("--accumulation", 1),
         max_steps=option("--max-steps", 0), save_steps=option("--save-steps", 1000), stall_at=option("--stall-at", 0),
         resume="--resume" in sys.argv, per_example="--per-example" in sys.argv, hidden=option("--hidden", 32))
