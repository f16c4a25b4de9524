"""Saving a module-sharded adapter: collective, atomic, all processes return or raise together; and a process's shard
refuses what needs the whole adapter.

This file is also the script the two-process test launches: ``python tests/test_sharded_saving.py OUT`` (no training:
each process keeps its shard of a fresh adapter and saves; then process 1 fails to write, and both must raise with
the folder unchanged).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import free_port, subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(out_dir: str) -> None:
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    import torch.distributed as dist

    import gradiend_peft.saving as hub
    from gradiend_peft.training.sharding import plan_for
    from training_fixtures import peft_model

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = peft_model("bert")
    plan = plan_for(model.peft_config["default"], 2)
    model.base_model.drop_modules("default", set(plan.modules[rank]))
    folder = hub.save_sharded_adapter(model, os.path.join(out_dir, "adapter"), rank, 2)

    def files() -> dict:
        return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
                if os.path.isfile(os.path.join(folder, name))}

    before = files()
    dist.barrier()  # both have read the folder before the next save stages into it

    real = hub._write_shard

    def failing(model, adapter_name, path, shared):
        if rank == 1:
            raise OSError("disk full (simulated)")
        return real(model, adapter_name, path, shared)

    hub._write_shard = failing
    with torch.no_grad():
        for param in model.base_model.adapter_state_dict("default").values():
            param.add_(1.0)  # a different adapter, which must not reach the folder
    try:
        hub.save_sharded_adapter(model, folder, rank, 2)
        outcome = "saved"
    except RuntimeError as err:
        outcome = str(err)
    after = files()
    with open(os.path.join(out_dir, f"outcome-{rank}.json"), "w") as handle:
        changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        json.dump({"outcome": outcome, "changed": changed, "files": sorted(before)}, handle)
    dist.barrier()
    dist.destroy_process_group()


def test_a_failed_shard_write_raises_on_every_process_and_leaves_the_saved_adapter(tmp_path):
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), os.path.abspath(__file__), str(tmp_path)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = [json.load(open(tmp_path / f"outcome-{rank}.json")) for rank in (0, 1)]
    for outcome in outcomes:
        assert "process 1 (shard 2 of 2) could not write its file" in outcome["outcome"]
        assert "disk full (simulated)" in outcome["outcome"] and "the folder is unchanged" in outcome["outcome"]
        assert outcome["changed"] == []
    assert outcomes[0]["files"] == ["README.md", "adapter_config.json", "adapter_model-00001-of-00002.safetensors",
                                    "adapter_model-00002-of-00002.safetensors", "adapter_model.safetensors.index.json"]
    assert not [name for name in os.listdir(tmp_path / "adapter") if name.startswith(".gradiend")]  # no staging left

    from gradiend_peft import load_gradiend_model
    from training_fixtures import peft_model
    from tiny import MODEL_BUILDERS

    expected = peft_model("bert").base_model.adapter_state_dict()
    loaded = load_gradiend_model(MODEL_BUILDERS["bert"](0), str(tmp_path / "adapter")).base_model.adapter_state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


def test_a_shard_refuses_merging_steering_and_encoding():
    from batches import masked_lm_batch
    from gradiend_peft.objective import encode_rows, per_example_reconstruction_loss, reconstruction_loss
    from gradiend_peft.training.sharding import plan_for
    from training_fixtures import peft_model

    model = peft_model("bert")
    plan = plan_for(model.peft_config["default"], 2)
    freed = model.base_model.drop_modules("default", set(plan.modules[0]))
    assert freed == (2 * 8192 + 8192) * 4  # E, D (k = 1) and c of the other shard's 8192 entries, float32
    tuner = model.base_model
    for what, call in [("Merging", lambda: model.merge_and_unload(feature_factor=1.0, lr=1.0)),
                       ("Steering", lambda: tuner.set_steering(1.0, 1.0)),
                       ("Decoding", lambda: tuner.decode(1.0)),
                       ("reset_adapter", lambda: tuner.reset_adapter()),
                       # the objective without a shard computes over the whole adapter: it refuses a share of it
                       ("Encoding rows", lambda: encode_rows(tuner, masked_lm_batch())),
                       ("The GRADIEND loss", lambda: reconstruction_loss(tuner, masked_lm_batch())),
                       ("The per-example GRADIEND loss",
                        lambda: per_example_reconstruction_loss(tuner, masked_lm_batch()))]:
        with pytest.raises(RuntimeError, match=f"{what}.*holds 6 of its 12 target modules.*load_gradiend_model"):
            call()


def test_the_plan_is_balanced_largest_first_and_disjoint():
    from gradiend_peft.training.sharding import ShardPlan

    plan = ShardPlan.balanced({"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}, 2)
    assert plan.modules == (("a", "d"), ("b", "c", "e")) and plan.entries == (8, 8)
    with pytest.raises(ValueError, match="every shard needs at least one module"):
        ShardPlan.balanced({"a": 1}, 2)


def test_sharding_refuses_a_single_process():
    from gradiend_peft.training.sharding import ShardLayout  # no process group in the test process

    with pytest.raises(ValueError, match="single process"):
        ShardLayout.create(2)


if __name__ == "__main__":
    _run(sys.argv[1])
