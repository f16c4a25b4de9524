"""The memory planner's counts, exactly, against hand counts and against real models (no timing, no measured memory:
the planned-vs-measured peaks live in benchmarks/memory_planner_check.py and docs/guides/memory.md)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import LlamaConfig

from gradiend_peft import GradiendConfig
from gradiend_peft.cli import main
from gradiend_peft.objective.gradients import head_at_positions
from gradiend_peft.planning import ModelShape, estimate_memory, parse_bytes
from gradiend_peft.planning.fit import scale_config
from gradiend_peft.planning.memory import largest_share
from gradiend_peft.planning.meta import trace_activations

from training_fixtures import one_thread  # noqa: F401
from tiny import MODEL_BUILDERS

pytestmark = pytest.mark.usefixtures("one_thread")

# tests/tiny.py's Llama: hidden 32, MLP 64, 2 blocks, 2 heads of 16, 1 key-value head (k, v project to 16)
LLAMA_BLOCK = 32 * 32 + 16 * 32 + 16 * 32 + 32 * 32 + 64 * 32 + 64 * 32 + 32 * 64  # q k v o gate up down = 9216


def test_tiny_llama_counts_match_the_hand_count():
    config = MODEL_BUILDERS["llama"]().config
    plan = estimate_memory(config, rows_per_gradient=4, seq_len=8)
    n = 2 * LLAMA_BLOCK
    assert plan.entries == n == 18432
    assert plan.adapter_numbers == 3 * n + 1  # E, D, c per entry and the encoder bias
    assert plan.adapter_bytes == 4 * (3 * n + 1) and plan.adapter_dtype == "float32"
    assert plan.optimizer_bytes == 2 * 4 * (3 * n + 1)  # AdamW's two float32 moments
    assert plan.target_modules == 14
    real = MODEL_BUILDERS["llama"]()
    assert plan.base_parameters == sum(p.numel() for p in real.parameters())
    training = {p.mode: p for p in plan.phases if p.phase == "training"}["single"]
    assert training.components["base weights"] == plan.base_bytes
    assert training.components["adapter (float32 masters)"] == plan.adapter_bytes
    assert training.components["AdamW state (2 moments)"] == plan.optimizer_bytes


def test_layers_latent_dim_and_a_bf16_adapter_change_the_counts_as_written():
    config = MODEL_BUILDERS["llama"]().config
    plan = estimate_memory(config, layers=[1], latent_dim=2, dtype="bfloat16", autocast_adapter_dtype=False,
                           rows_per_gradient=4, seq_len=8)
    n = LLAMA_BLOCK
    assert plan.entries == n and plan.layers == [1] and plan.target_modules == 7
    assert plan.adapter_numbers == 5 * n + 2  # 2k + 1 per entry, k encoder biases
    assert plan.adapter_bytes == 2 * (5 * n + 2) and plan.adapter_dtype == "bfloat16"
    assert plan.optimizer_bytes == 2 * 4 * (5 * n + 2)  # the masters and their moments stay float32
    training = {p.mode: p for p in plan.phases if p.phase == "training"}["single"]
    assert training.components["adapter (float32 masters)"] == 4 * (5 * n + 2)
    with pytest.raises(ValueError, match="do not exist"):
        estimate_memory(config, layers=[2])


@pytest.mark.parametrize("family", ["gpt2", "bert", "gemma3"])
def test_entries_match_the_tuner_on_other_architectures(family):
    real = get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(include_embeddings=True))
    plan = estimate_memory(MODEL_BUILDERS[family]().config, include_embeddings=True, rows_per_gradient=2, seq_len=8)
    assert plan.entries == real.base_model.num_entries()
    assert plan.adapter_numbers == 3 * plan.entries + 1


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gemma3"])
def test_traced_activations_are_what_autograd_saves(family):
    """The meta-device trace against the bytes real autograd saves on the real model (storages counted once,
    parameters left out), for the forward and the two cross-entropies of a gradient step."""
    B, T = 4, 12
    shape = ModelShape.build(MODEL_BUILDERS[family]().config)
    traced = trace_activations(shape.peft_model, shape.weights(shape.targets), B, T, loss_kinds=2)["saved"]
    model = MODEL_BUILDERS[family]()
    peft_model = get_peft_model(model, GradiendConfig())
    for layer in peft_model.base_model.gradiend_layers().values():
        layer.get_base_layer().weight.requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with head_at_positions(model, torch.zeros(B, 1, dtype=torch.long), T):
            logits = model(input_ids=torch.randint(5, 100, (B, T))).logits
        for _ in range(2):
            F.cross_entropy(logits.reshape(B, -1).float(), torch.zeros(B, dtype=torch.long), reduction="none")
    real = sum(size for pointer, size in saved.items() if pointer not in params)
    assert abs(traced - real) <= 64, (traced, real)  # the label tensors' few bytes


def test_an_8b_llama_is_planned_without_allocating_it():
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    plan = estimate_memory(config, "all-linear", dtype="bfloat16", rows_per_gradient=8, seq_len=64, processes=8)
    block = 2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096
    assert plan.entries == 32 * block == 6_979_321_856
    assert plan.base_parameters == 32 * (block + 2 * 4096) + 4096 + 2 * 128256 * 4096
    sharded = {p.phase: p for p in plan.phases if p.mode == "sharded"}["training"]
    modules = [4096 * 4096, 1024 * 4096, 1024 * 4096, 4096 * 4096, 14336 * 4096, 14336 * 4096, 4096 * 14336] * 32
    share = largest_share(modules, 8)[0]
    assert share == plan.entries // 8  # 224 modules deal evenly over 8 processes
    assert sharded.components["adapter (float32 masters)"] == 4 * (3 * share + 1)
    assert sharded.components["AdamW state (2 moments)"] == 8 * (3 * share + 1)
    assert sharded.components["base weights"] == plan.base_bytes
    assert 0 <= plan.base_bytes - 2 * plan.base_parameters < 4096  # bfloat16 weights and the rotary buffers


def test_largest_share_deals_modules_to_the_least_loaded_process():
    assert largest_share([5, 4, 3, 3, 2, 1], 2)[0] == 9
    assert largest_share([10, 1, 1], 3)[0] == 10  # modules are indivisible
    assert largest_share([1, 1, 1, 1], 1)[0] == 4


def test_fits_finds_the_most_blocks_and_a_larger_model_when_sharded():
    config = MODEL_BUILDERS["llama"]().config
    settings = dict(layers=[1], rows_per_gradient=2, seq_len=8, search_rows=1)
    small = estimate_memory(config, **settings)
    budget = max(small.peak("training"), small.peak("encoding")) + 1000  # room for the top block, not for both
    plan = estimate_memory(config, processes=2, device_memory=budget, **settings)
    assert plan.fits["blocks"]["single"] == 1
    assert plan.fits["scaled"]["single"]["heads"] == 2  # this very model
    assert plan.fits["blocks"]["sharded"] == 2  # half the adapter per process: both blocks
    bigger = scale_config(config, 4)
    assert (bigger.hidden_size, bigger.num_hidden_layers, bigger.intermediate_size) == (64, 4, 128)
    assert bigger.num_key_value_heads == 2  # the grouping (2 query heads per key-value head) is kept


def test_parse_bytes_reads_sizes():
    assert parse_bytes("80GB") == 80 * 2**30 and parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="80GB"):
        parse_bytes("eighty")


def test_estimate_memory_command(tmp_path, capsys):
    folder = tmp_path / "llama"
    MODEL_BUILDERS["llama"]().save_pretrained(folder)
    out = tmp_path / "plan.json"
    code = main(["estimate-memory", "--model", str(folder), "--layers", "1", "--rows_per_gradient", "4", "--seq_len",
                 "8", "--processes", "2", "--device-memory", "2GB", "--overhead", "0", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "n = 9,216" in text and "module-sharded, 2 processes" in text and "fits (2GB per device" in text
    saved = json.loads(out.read_text())
    assert saved["entries"] == LLAMA_BLOCK and saved["fits"]["blocks"]["single"] == 2
