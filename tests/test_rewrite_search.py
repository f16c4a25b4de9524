"""search_rewrite on tiny masked and causal LMs: in place and bit-identical after, metrics equal a merged model's
measured by plain loops, the reference grid, refinement, the guards, and a hand-made adapter whose direction is known."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.data import collator_for
from gradiend_peft.evaluation import REFERENCE_LEARNING_RATES, RewriteResult, prepare_lms, prepare_slots, search_rewrite

from batches import ROWS
from test_evaluation_scoring import one_thread  # noqa: F401  (autouse fixture)
from tiny import MODEL_BUILDERS, TOKENIZER_KIND, word_tokenizer

MINED = [
    {"text": f"{pre} [MASK] {post}", "factual": f, "alternative": a, "factual_class": "F" if f == "she" else "M",
     "alternative_class": "F" if a == "she" else "M", "label": label}
    for pre, post, f, a, label in ROWS
]
NEUTRAL = ["the dog ran home when it was night .", "there was a big red car in the city .",
           "the children walk to the old house .", "a man and a woman went to the store ."]
SMALL = dict(lrs=(0.2, 1.0, 5.0), refine=False, progress=False)


def crafted(family, **config):
    """A GRADIEND model whose decoder is the unit descent direction of the loss of "she" at every slot: merging
    ``lr * d(+1)`` takes a gradient step of length ``lr`` toward "she"."""
    model = get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(init_seed=0, feature_classes=["F", "M"], **config))
    tuner = model.base_model
    tok = word_tokenizer(TOKENIZER_KIND[family])
    batch = collator_for(tok, tuner.peft_config["default"].objective)(MINED)
    she = torch.where((batch["label"] > 0).unsqueeze(1), batch["factual_labels"], batch["alternative_labels"])
    layers = tuner.gradiend_layers("default")
    weights = [layer.get_base_layer().weight for layer in layers.values()]
    for w in weights:
        w.requires_grad_(True)
    logits = tuner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    grads = torch.autograd.grad(F.cross_entropy(logits[she != -100], she[she != -100]), weights)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    with torch.no_grad():
        for w, layer, g in zip(weights, layers.values(), grads):
            w.requires_grad_(False)
            layer.gradiend_decoder["default"][0].copy_(-g / norm)
            layer.gradiend_decoder_bias["default"].zero_()
    return model, tok


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("apply", ["steer", "merge"])
def test_search_leaves_the_model_bit_identical(apply):
    model, tok = crafted("gpt2", include_embeddings=True)  # a tied LM head is steered and merged too
    model.train()
    before = snapshot(model)
    kwargs = dict(tokenizer=tok, policy="balance", apply=apply, feature_factors=(-1.0, 0.0, 1.0), refine_rounds=1,
                  lrs=(0.2, 1.0, 5.0), progress=False)
    first = search_rewrite(model, MINED, NEUTRAL, **kwargs)
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    layers = model.base_model.gradiend_layers().values()
    assert not any(layer.merged or layer._steering for layer in layers)
    assert all(m.training for m in model.modules())  # modes restored; the search itself ran in eval mode
    second = search_rewrite(model, MINED, NEUTRAL, **kwargs)
    assert [c.metrics for c in first.candidates] == [c.metrics for c in second.candidates]  # no dropout
    assert any(c.metrics.mean_abs_shift > 0 for c in first.candidates)  # candidates did act


def _plain_probs(model, tok, objective, rows):
    """P(F), P(M) per row, one unpadded row at a time."""
    out = []
    for row in rows:
        prefix, suffix = row["text"].split("[MASK]")
        if objective == "masked_lm":
            ids = tok(prefix + tok.mask_token + suffix)["input_ids"]
            position = ids.index(tok.mask_token_id)
            she, he = tok.convert_tokens_to_ids("she"), tok.convert_tokens_to_ids("he")
        else:
            ids = tok(prefix.rstrip())["input_ids"]
            position = len(ids) - 1
            she, he = tok(" she")["input_ids"][0], tok(" he")["input_ids"][0]
        with torch.no_grad():
            p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, position].double(), dim=0)
        out.append((p[she].item(), p[he].item()))
    return out


def _plain_lms(model, tok, objective):
    inputs = prepare_lms(NEUTRAL, tok, objective)
    hits = total = 0.0
    for batch in inputs.batches:
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            ids, labels = ids[mask.bool()].unsqueeze(0), labels[mask.bool()]
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0]
            if objective == "masked_lm":
                at = labels != -100
                hits += float((logits[at].argmax(-1) == labels[at]).sum())
                total += float(at.sum())
            else:
                hits += float(F.cross_entropy(logits[:-1], labels[1:], reduction="sum"))
                total += len(labels) - 1
    return hits / total if objective == "masked_lm" else 1 / (1 + hits / total)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_candidate_metrics_equal_the_merged_models(family):
    model, tok = crafted(family)
    control = MINED[:4]
    result = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="strengthen:F", control=control,
                            lms_floor=None, control_floor=None, **SMALL)
    chosen = max(result.candidates, key=lambda c: c.metrics.mean_abs_shift)  # the candidate that acts most
    objective = model.peft_config["default"].objective
    merged = crafted(family)[0].merge_and_unload(feature_factor=chosen.feature_factor, lr=chosen.lr)
    probs = _plain_probs(merged, tok, objective, MINED)
    m = chosen.metrics
    assert m.class_probs["F"] == pytest.approx(sum(p[0] for p in probs) / len(probs), rel=1e-4)
    assert m.probs_by_class["M"]["F"] == pytest.approx(sum(p[0] for p, r in zip(probs, MINED) if r["label"] < 0) / 4, rel=1e-4)
    gaps = [abs(a - b) for a, b in probs]
    assert m.mean_abs_gap == pytest.approx(sum(gaps) / len(gaps), rel=1e-4, abs=1e-9)
    assert m.bpi == pytest.approx(sum((1 - abs(a - b)) * (a + b) for a, b in probs) / len(probs), rel=1e-4)
    own = [(p[0] > p[1]) == (r["factual_class"] == "F") for p, r in zip(probs[:4], control)]
    assert m.control_accuracy == sum(own) / 4
    assert m.lms == pytest.approx(_plain_lms(merged, tok, objective), rel=1e-4)
    base_probs = _plain_probs(MODEL_BUILDERS[family](), tok, objective, MINED)
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(result.base_row_probs) == pytest.approx(flat(base_probs), rel=1e-5)


def test_default_grid_is_the_references():
    model, tok = crafted("gpt2")
    result = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="strengthen:F", early_stop=False,
                            refine=False, progress=False)
    grid = {(c.feature_factor, c.lr) for c in result.candidates}
    assert grid == {(ff, lr) for ff in (1.0, -1.0) for lr in REFERENCE_LEARNING_RATES}
    assert len(result.candidates) == 32 and all(c.metrics.stage == "grid" for c in result.candidates)
    balance = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="balance", lrs=(1.0,), refine=False,
                             progress=False)
    assert sorted(c.feature_factor for c in balance.candidates) == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_known_direction_is_found(family):
    model, tok = crafted(family)
    tuner = model.base_model
    strong = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="strengthen:F", lms_floor=None, **SMALL)
    weak = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="weaken:F", lms_floor=None, **SMALL)
    assert strong.best.feature_factor == tuner.feature_factor_for("F") == 1.0
    assert weak.best.feature_factor == tuner.feature_factor_for("F", strengthen=False) == -1.0
    assert strong.best.metrics.probs_by_class["M"]["F"] > strong.base.metrics.probs_by_class["M"]["F"]
    assert weak.best.metrics.probs_by_class["F"]["F"] < weak.base.metrics.probs_by_class["F"]["F"]


def test_refinement_finds_the_rate_between_grid_points_where_the_guard_starts_to_fail():
    model, tok = crafted("llama")  # its base prefers "he" on 3 of the 4 M rows: they make controls
    control = [r for r in MINED if r["factual_class"] == "M"]
    grid = (0.001, 0.01, 0.1, 1.0)
    kwargs = dict(tokenizer=tok, policy="strengthen:F", control=control, feature_factors=(1.0,), lrs=grid, progress=False)
    coarse = search_rewrite(model, MINED, NEUTRAL, refine=False, **kwargs)
    fine = search_rewrite(model, MINED, NEUTRAL, **kwargs)
    assert coarse.base.metrics.control_accuracy == 0.75
    last_ok, fails = coarse.best.lr, coarse.transitions["1"]["fails_from"]
    assert (last_ok, fails) == (0.01, 0.1)  # the controls flip somewhere in between
    refined = [c for c in fine.candidates if c.metrics.stage == "refine"]
    assert refined and not any(c.lr in grid for c in refined)
    assert last_ok < fine.best.lr < fails and fine.best.metrics.stage == "refine"
    assert fine.best.score > coarse.best.score > coarse.base.score
    assert fine.best.metrics.control_accuracy >= 0.95 * fine.base.metrics.control_accuracy
    assert all(not c.feasible and "control" in c.reasons[0] for c in fine.candidates if c.lr >= fails)


def test_a_sweep_stops_after_two_rates_in_a_row_fail_a_guard():
    model, tok = crafted("llama")
    control = [r for r in MINED if r["factual_class"] == "M"]
    grid = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    kwargs = dict(tokenizer=tok, policy="strengthen:F", control=control, feature_factors=(1.0,), lrs=grid,
                  refine=False, progress=False)
    stopped = search_rewrite(model, MINED, NEUTRAL, **kwargs)
    assert [c.lr for c in stopped.candidates] == [0.001, 0.01, 0.1, 1.0]  # 0.1 and 1.0 flip the controls
    full = search_rewrite(model, MINED, NEUTRAL, early_stop=False, **kwargs)
    assert [c.lr for c in full.candidates] == list(grid)
    assert full.candidates[:4] == stopped.candidates


def test_result_round_trips_and_feeds_merge_and_unload(tmp_path):
    model, tok = crafted("llama")
    result = search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="strengthen:F", **SMALL)
    again = RewriteResult.from_dict(json.load(open(result.save_json(str(tmp_path / "rewrite.json")))))
    assert again.best == result.best and again.candidates == result.candidates and again.base == result.base
    assert len(result.to_table()) == len(result.candidates) + 1
    ffs, lrs, values = result.grid("lms")
    assert ffs == [-1.0, 1.0] and lrs == [0.2, 1.0, 5.0] and len(values) == 2 and not math.isnan(values[1][2])
    kwargs = result.merge_kwargs()
    merged = model.merge_and_unload(**kwargs)
    assert not hasattr(merged, "peft_config") and kwargs == {"feature_factor": result.best.feature_factor,
                                                             "lr": result.best.lr}
    nothing = RewriteResult(policy={}, classes=("F", "M"), base=result.base, candidates=(), best=None,
                            lms_floor=0.99, control_floor=0.95)
    with pytest.raises(ValueError, match="no candidate"):
        nothing.merge_kwargs()


def test_policies_share_measurements_and_score_them_alike():
    model, tok = crafted("gpt2")
    calls = []
    model.base_model.model.register_forward_hook(lambda *_: calls.append(1))
    kwargs = dict(tokenizer=tok, lrs=(0.2, 1.0, 5.0), progress=False, lms_floor=None)
    alone = search_rewrite(model, MINED, NEUTRAL, policy="weaken:F", **kwargs)
    calls.clear()
    shared: dict = {}
    balance = search_rewrite(model, MINED, NEUTRAL, policy="balance", measurements=shared, **kwargs)
    first = len(calls)
    weaken = search_rewrite(model, MINED, NEUTRAL, policy="weaken:F", measurements=shared, **kwargs)
    # weaken's grid (ff +-1) and base were all measured by balance: only its own refinement costs forward passes
    new = {(c.feature_factor, c.lr) for c in weaken.candidates} - {(c.feature_factor, c.lr) for c in balance.candidates}
    # each costs one pass per batch of rows and of neutral texts (batched by length)
    passes = len(prepare_slots(MINED, tok, "causal_lm").batches) + len(prepare_lms(NEUTRAL, tok, "causal_lm").batches)
    assert new and len(calls) - first == passes * len(new)
    assert weaken.candidates == alone.candidates and weaken.best == alone.best and weaken.base == alone.base
    with pytest.raises(ValueError, match="other rows"):
        search_rewrite(model, MINED[:4], NEUTRAL, policy="balance", measurements=shared, **kwargs)


def test_bad_arguments_are_refused():
    model, tok = crafted("gpt2")
    with pytest.raises(ValueError, match="rows' classes"):
        search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, policy="strengthen:X", **SMALL)
    with pytest.raises(ValueError, match="positive"):
        search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, lrs=(0.0, 1.0), refine=False, progress=False)
    with pytest.raises(ValueError, match="apply"):
        search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, apply="copy", **SMALL)
    with pytest.raises(ValueError, match="factual_class"):
        search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, control=[dict(MINED[0], factual_class="X")], **SMALL)
    model.base_model.merge_adapter(feature_factor=1.0, lr=0.1)
    with pytest.raises(ValueError, match="unmerge"):
        search_rewrite(model, MINED, NEUTRAL, tokenizer=tok, **SMALL)


# ------------------------------------------------------------------------------- skipping unchanged blocks
def _edited_upper_block(family: str):
    from tiny import MODEL_BUILDERS

    targets = {"llama": r".*layers\.1\..*_proj", "gemma3": r".*layers\.1\..*_proj",
               "gpt2": r".*h\.1\.(attn|mlp)\.c_.*", "bert": r".*layer\.1\..*(dense|query|key|value)"}[family]
    return get_peft_model(MODEL_BUILDERS[family](), GradiendConfig(target_modules=targets, init_seed=0))


@pytest.mark.parametrize("family, skipped", [("llama", 1), ("gemma3", 1), ("gpt2", 0), ("bert", 0)])
def test_skipping_unchanged_blocks_measures_the_same_candidates(family, skipped):
    """Blocks below the first edited one are computed once; every candidate's numbers are those of full forward
    passes. GPT-2 (position embeddings added to inputs_embeds) and BERT (normalised embeddings) fail the check and
    fall back to full passes."""
    from tiny import TOKENIZER_KIND, word_tokenizer

    from training_fixtures import pairs

    kind = TOKENIZER_KIND[family]
    tok = word_tokenizer(kind)
    model = _edited_upper_block(family)
    rows = list(pairs("llama" if kind == "gpt2" else "bert")["test"])
    neutral = ["the dog ran to the store .", "there was a red car in the city ."]
    kwargs = dict(tokenizer=tok, lrs=[1.0, 10.0, 100.0], feature_factors=[-1.0, 0.0, 1.0], progress=False,
                  lms_floor=None, control_floor=None, require_improvement=False, control=rows[:4])
    full = search_rewrite(model, rows, neutral, skip_unchanged=False, **kwargs)
    fast = search_rewrite(model, rows, neutral, skip_unchanged=True, **kwargs)
    assert fast.settings["skipped_blocks"] == skipped and full.settings["skipped_blocks"] == 0
    assert len(full.candidates) == len(fast.candidates)
    for a, b in zip(full.candidates, fast.candidates):
        assert (a.feature_factor, a.lr) == (b.feature_factor, b.lr)
        for x, y in ((a.score, b.score), (a.lms, b.lms), (a.metrics.control_accuracy, b.metrics.control_accuracy)):
            assert x == pytest.approx(y, rel=0, abs=1e-12)  # the same computation on the same inputs
    assert (full.best.feature_factor, full.best.lr) == (fast.best.feature_factor, fast.best.lr)


def test_cached_steering_equals_plain_steering_and_follows_adapter_changes():
    from batches import causal_lm_batch

    model = _edited_upper_block("llama")
    batch = causal_lm_batch()
    tuner = model.base_model
    with torch.no_grad():
        with tuner.steer(1.0, 30.0):
            plain = model(input_ids=batch["input_ids"]).logits
        with tuner.steer(1.0, 30.0, cache=True):
            first = model(input_ids=batch["input_ids"]).logits
            second = model(input_ids=batch["input_ids"]).logits  # from the cached shifted weights
            assert torch.equal(first, plain) and torch.equal(second, plain)
            next(iter(tuner.gradiend_layers().values())).gradiend_decoder["default"].mul_(3.0)  # the adapter changes
            changed = model(input_ids=batch["input_ids"]).logits
        assert not torch.equal(changed, plain)
        with tuner.steer(1.0, 30.0):
            assert torch.equal(model(input_ids=batch["input_ids"]).logits, changed)


def test_measure_rewrites_gives_what_the_search_measured():
    """A chosen rewrite measured again (e.g. on held-out rows) reproduces the search's own numbers on its rows."""
    from gradiend_peft.evaluation import measure_rewrites
    from tiny import word_tokenizer

    from training_fixtures import pairs

    model = _edited_upper_block("llama")
    rows = list(pairs("llama")["test"])
    neutral = ["the dog ran to the store .", "there was a red car in the city ."]
    tok = word_tokenizer("gpt2")
    result = search_rewrite(model, rows, neutral, tokenizer=tok, lrs=[1.0, 10.0, 100.0], feature_factors=[-1.0, 1.0],
                            progress=False, lms_floor=None, control_floor=None, require_improvement=False,
                            control=rows[:4])
    chosen = result.best
    (base, base_probs), (again, probs) = measure_rewrites(
        model, rows, neutral, [(0.0, 0.0), (chosen.feature_factor, chosen.lr)], tokenizer=tok, control=rows[:4])
    assert again.mean_abs_gap == pytest.approx(chosen.metrics.mean_abs_gap, abs=1e-12)
    assert again.lms == pytest.approx(chosen.lms, abs=1e-12)
    assert again.control_accuracy == chosen.metrics.control_accuracy
    assert base.mean_abs_gap == pytest.approx(result.base.metrics.mean_abs_gap, abs=1e-12)
    assert probs.shape == base_probs.shape == (len(rows), 2)
    assert torch.equal(torch.tensor(result.best_row_probs, dtype=torch.float64), probs)
