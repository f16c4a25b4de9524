"""Encoding rows: the one-backward per-example engine vs a loop of per-row autograd (same process, interleaved).

    python benchmarks/encode_rows.py [--rows 64] [--repeats 7] [--threads 1]

Both compute the per-row encodings h_i = tanh(s * <E, g_i> + b) of a GRADIEND adapter on a tiny BERT built from a
config (all block projections plus the embedding as targets); the script checks they agree, then prints the median
times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from peft import get_peft_model  # noqa: E402

from gradiend_peft import GradiendConfig  # noqa: E402
from gradiend_peft.objective import encode_rows
from gradiend_peft.objective import batch_gradients  # noqa: E402
from batches import masked_lm_batch, ROWS  # noqa: E402
from tiny import tiny_bert  # noqa: E402


def loop_encode(tuner, batch):
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        rows.append(tuner.encode_gradients(batch_gradients(tuner, row, ["alternative"])["alternative"]))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = (ROWS * (args.rows // len(ROWS) + 1))[: args.rows]
    batch = masked_lm_batch(rows)
    model = get_peft_model(tiny_bert(), GradiendConfig(include_embeddings=True, init_seed=0))
    tuner = model.base_model
    with torch.no_grad():
        fast, slow = encode_rows(tuner, batch), loop_encode(tuner, batch)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    fast_times, slow_times = [], []
    for _ in range(args.repeats):  # interleaved A B A B
        start = time.perf_counter()
        encode_rows(tuner, batch)
        fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        loop_encode(tuner, batch)
        slow_times.append(time.perf_counter() - start)
    fast_median, slow_median = statistics.median(fast_times), statistics.median(slow_times)
    print(f"rows={args.rows} threads={args.threads} repeats={args.repeats} (tiny BERT, n={sum(l.num_entries('default') for l in tuner.gradiend_layers().values())})")
    print(f"one-backward engine : {fast_median * 1000:8.1f} ms")
    print(f"per-row autograd    : {slow_median * 1000:8.1f} ms")
    print(f"speed-up            : {slow_median / fast_median:8.1f} x")


if __name__ == "__main__":
    main()
