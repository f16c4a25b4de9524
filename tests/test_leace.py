"""The LEACE baseline: after erasure no linear map of the hidden states covaries with the feature."""

import pytest
import torch

pytest.importorskip("concept_erasure", reason="the optional LEACE baseline needs pip install concept-erasure==0.2.4")

from gradiend_peft.bias.leace import LeaceBaseline, block_list  # noqa: E402
from gradiend_peft.evaluation.scoring import logits_of, prepare_slots  # noqa: E402

from training_fixtures import pairs  # noqa: E402
from tiny import tiny_llama, word_tokenizer  # noqa: E402


def _slot_states(model, slots, layer):
    blocks, states, rows = block_list(model), [], []

    def grab(module, args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handle = blocks[layer].register_forward_hook(grab)
    try:
        with torch.no_grad():
            for batch in slots.batches:
                states.clear()
                logits_of(model, batch["input_ids"], batch["attention_mask"])
                hidden = states[-1]
                rows.append(hidden[torch.arange(hidden.shape[0]), batch["position"]].double())
    finally:
        handle.remove()
    return torch.cat(rows)


def test_erased_states_do_not_covary_with_the_class():
    torch.manual_seed(0)
    model, tok = tiny_llama(), word_tokenizer("gpt2")
    rows = list(pairs("llama")["train"])
    slots = prepare_slots(rows, tok, "causal_lm")
    order = [i for b in slots.batches for i in b["index"].tolist()]
    z = torch.tensor([1.0 if slots.row_classes[i] == "M" else 0.0 for i in order], dtype=torch.float64)
    baseline = LeaceBaseline.fit(model, rows, tok, "causal_lm", layers=[1])

    def covariance(x):  # cross-covariance of the states with the class indicator, in float64
        return ((x - x.mean(0)) * (z - z.mean()).unsqueeze(1)).mean(0).abs().max()

    before = _slot_states(model, slots, 1)
    with baseline.applied():
        after = _slot_states(model, slots, 1)
    assert covariance(before) > 1e-3
    # the eraser works in float32: what is left is round-off of the states' magnitude
    assert covariance(after) < 64 * torch.finfo(torch.float32).eps * float(before.abs().max())
    assert not torch.equal(before, after)
    with baseline.applied():
        pass
    assert torch.equal(_slot_states(model, slots, 1), before)  # the hooks are gone after the context
