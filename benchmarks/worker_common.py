"""The worker side of the benchmark protocol, shared by `ours_worker.py` and `ref_worker.py`.

Each implementation runs in its own process (the reference in its own virtual environment). The orchestrator
(`run.py`) sends one JSON object per line on the worker's stdin, ``{"op": NAME, ...arguments}``, and reads one JSON
object per line back: ``{"ok": true, ...results}`` or ``{"ok": false, "error": ...}``. Anything the libraries print
goes to stderr, never into the protocol: the protocol writes to a duplicate of the original stdout and ``sys.stdout``
is pointed at stderr before any library is imported.

Only the standard library and torch are used here, so that both environments can import this file.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from typing import Any, Callable

PROTOCOL = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr  # library output must not reach the protocol stream


def fix_threads(threads: int) -> None:
    """One thread count for every compared program (set before heavy imports where possible)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs) and the GPU peak; False where the
    RSS peak cannot be reset."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def sync() -> None:
    """Waits for queued GPU work (no-op on CPU), so that wall-clock times cover it."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def gpu_peak_bytes() -> int:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - start, value


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
    """Answers requests until stdin closes or an ``exit`` op arrives."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        op = request.pop("op")
        if op == "exit":
            PROTOCOL.write(json.dumps({"ok": True}) + "\n")
            break
        try:
            result = handlers[op](**request)
            answer = {"ok": True, **result}
        except Exception as err:  # reported to the orchestrator, which decides
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        PROTOCOL.write(json.dumps(answer) + "\n")
