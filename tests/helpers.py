"""Helpers that several test files share (the tiny models and tokenizers are in ``tiny.py``, hand-built batches in
``batches.py``, independent reference computations in ``oracles.py``).

- `subprocess_env`: the environment of a child process that a test starts (a training script, an example, a saving
  process): one thread, no tokenizer threads, no GPU, no Hub, this folder importable.
- `free_port`: a free TCP port on 127.0.0.1 for a ``torch.distributed`` rendezvous (``accelerate launch``).
- `shard_saved_adapter`: a saved single-file adapter turned into the layout of a module-sharded save, in one process.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from safetensors.torch import load_file, save_file

TESTS = os.path.dirname(os.path.abspath(__file__))
"""This folder: child processes import ``tiny``, ``batches`` and the test scripts from it."""


def subprocess_env(tests_importable: bool = True, **extra: str) -> dict[str, str]:
    """``os.environ`` for a child process: ``OMP_NUM_THREADS=1`` (with other processes on a 2-core machine, more
    torch threads run far slower), ``TOKENIZERS_PARALLELISM=false``, ``HF_HUB_OFFLINE=1``, ``MPLBACKEND=Agg`` and no
    ``CUDA_VISIBLE_DEVICES``; with ``tests_importable`` this folder goes first on ``PYTHONPATH`` (an example runs
    without it, as a user runs it). ``extra`` is set last and wins."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if tests_importable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; a race with another process is possible
    but rare)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shard_saved_adapter(path: Path, files: int = 2) -> dict:
    """Turns the single-file adapter at ``path`` into a sharded one (modules dealt round-robin, the shared tensors in
    file 1), as a module-sharded training run saves it; returns the index."""
    tensors = load_file(path / "adapter_model.safetensors")
    modules = sorted({key.rsplit(".", 1)[0] for key in tensors if key.startswith("base_model.model.")})
    owner = {module: i % files for i, module in enumerate(modules)}
    parts: list[dict] = [{} for _ in range(files)]
    for key, value in tensors.items():
        parts[owner[key.rsplit(".", 1)[0]] if key.startswith("base_model.model.") else 0][key] = value
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"adapter_model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file(part, path / name)
        weight_map.update({key: name for key in part})
    (path / "adapter_model.safetensors").unlink()
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "adapter_model.safetensors.index.json").write_text(json.dumps(index))
    return index
