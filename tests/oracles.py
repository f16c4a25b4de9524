"""Reference computations written independently of the package (one text at a time, no padding, plain loops), for
tests to compare the package's batched scorers against; run them on float64 copies of the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def oracle_causal(model, ids, first_scored):
    """``sum_{t >= first_scored} log p(ids[t] | ids[:t])`` with one sequence, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = F.log_softmax(logits, dim=-1)
    return sum(float(lp[t - 1, ids[t]]) for t in range(first_scored, len(ids)))


def oracle_next_token_probs(model, ids):
    """``softmax`` of the logits after the last of ``ids`` (the next-token distribution), float64."""
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), dim=-1)


def oracle_pll(model, ids, positions, mask_id):
    """The sum over ``positions`` of ``log P(ids[p])`` with ``ids[p]`` masked, one copy at a time."""
    total = 0.0
    for p in positions:
        masked = list(ids)
        masked[p] = mask_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, p].double()
        total += float(F.log_softmax(logits, dim=-1)[ids[p]])
    return total


def f32_tol(n_tokens, values):
    """Float32 rounding: a few hundred ulps per scored token, relative to the log-probabilities' size."""
    return 300 * torch.finfo(torch.float32).eps * n_tokens * max(1.0, max(abs(v) for v in values))
