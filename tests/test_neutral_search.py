"""Filled-row log-odds and the LMS-guarded search for the rewrite that removes a class x filler association
(`gradiend_peft.evaluation.neutralise`)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from gradiend_peft import GradiendConfig
from gradiend_peft.evaluation.neutralise import NeutralCandidate, search_neutral_rewrite, select_neutral
from gradiend_peft.evaluation.scoring.filled_rows import filled_row_log_odds

from test_evaluation_scoring import one_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_bert, tiny_gpt2, word_tokenizer

ROWS = [  # a class-swapped pair per frame: the factual filler is the one "associated" with the row's subject
    {"text": "my mother likes the [MASK] .", "factual": "cat", "alternative": "dog", "factual_class": "F"},
    {"text": "my father likes the [MASK] .", "factual": "dog", "alternative": "cat", "factual_class": "M"},
    {"text": "the woman went to the [MASK] house .", "factual": "red", "alternative": "big blue", "factual_class": "F"},
    {"text": "the man went to the [MASK] house .", "factual": "big blue", "alternative": "red", "factual_class": "M"},
]
NEUTRAL = ["the dog ran home when it was night .", "there was a big red car in the city .",
           "the children walk to the old house ."]


def _causal_total(model, tok, text: str) -> float:
    """Float64 oracle: the BOS in front, every token of the text scored from the logits one position earlier."""
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))


def test_causal_log_odds_equal_the_difference_of_whole_sentence_likelihoods():
    model, tok = tiny_gpt2().double().eval(), word_tokenizer("gpt2")
    assert tok.bos_token_id is not None
    got = filled_row_log_odds(model, tok, ROWS, batch_size=3, progress=False)
    expected = [_causal_total(model, tok, r["text"].replace("[MASK]", r["factual"]))
                - _causal_total(model, tok, r["text"].replace("[MASK]", r["alternative"])) for r in ROWS]
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_swapping_the_fillers_negates_the_log_odds_for_a_masked_lm_too():
    model, tok = tiny_bert().eval(), word_tokenizer("bert")
    swapped = [{**r, "factual": r["alternative"], "alternative": r["factual"]} for r in ROWS]
    a = filled_row_log_odds(model, tok, ROWS, progress=False)
    b = filled_row_log_odds(model, tok, swapped, progress=False)
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(a, -b, atol=200 * eps) and a.abs().max() > 1e3 * eps  # not all zero


@pytest.mark.parametrize("row, words", [({"text": "no slot here", "factual": "a", "alternative": "b"}, "MASK"),
                                        ({"text": "a [MASK] b [MASK]", "factual": "a", "alternative": "b"}, "MASK"),
                                        ({"text": "a [MASK]", "factual": "", "alternative": "b"}, "factual")])
def test_malformed_rows_are_named(row, words):
    model, tok = tiny_gpt2(), word_tokenizer("gpt2")
    with pytest.raises(ValueError, match=rf"Row 1 .*{words}"):
        filled_row_log_odds(model, tok, [ROWS[0], row])
    with pytest.raises(ValueError, match="at least one row"):
        filled_row_log_odds(model, tok, [])


def _c(lr: float, m: float, lms: float) -> NeutralCandidate:
    return NeutralCandidate(feature_factor=0.0, lr=lr, mean_log_odds=m, factual_preferred=0.5, lms=lms)


def test_select_neutral_takes_the_smallest_absolute_mean_among_candidates_that_keep_the_lms():
    base = _c(0.0, 0.60, 0.200)
    # hand: lr 3 (|m| 0.05) breaks the floor 0.99 x 0.2 = 0.198; of the rest, lr 2 (|-0.10|) beats lr 1 (0.30)
    candidates = [_c(1.0, 0.30, 0.200), _c(2.0, -0.10, 0.1985), _c(3.0, 0.05, 0.1970), _c(4.0, float("nan"), 0.3)]
    assert select_neutral(candidates, base, 0.99) is candidates[1]
    assert select_neutral(candidates, base, 0.0) is candidates[2]
    assert select_neutral([_c(1.0, -0.7, 0.2)], base, 0.99) is None  # overshooting past the base's |m| is no gain
    assert select_neutral(candidates, base, 1.01) is None  # none keeps the LMS


def test_search_steers_each_candidate_like_a_merge_and_leaves_the_model_unchanged():
    model = get_peft_model(tiny_gpt2(), GradiendConfig(init_seed=0, target_modules=r".*h\.1\.mlp\.c_.*"))
    tok = word_tokenizer("gpt2")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = search_neutral_rewrite(model, tok, ROWS, NEUTRAL, lrs=[0.5, 5.0], lms_floor=0.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.base.mean_log_odds == pytest.approx(float(filled_row_log_odds(model, tok, ROWS).mean()), abs=1e-9)
    for candidate in result.candidates:  # the same rewrite written into the weights, measured independently
        model.base_model.merge_adapter(feature_factor=0.0, lr=candidate.lr)
        try:
            merged = filled_row_log_odds(model, tok, ROWS, progress=False)
        finally:
            model.base_model.unmerge_adapter()
        assert candidate.mean_log_odds == pytest.approx(float(merged.mean()), abs=1e-4)
        assert candidate.factual_preferred == pytest.approx(float((merged > 0).double().mean()))
    assert result.candidates[0].mean_log_odds != pytest.approx(result.base.mean_log_odds, abs=1e-6)  # it acts
    assert result.best is select_neutral(result.candidates, result.base, 0.0)
    strict = search_neutral_rewrite(model, tok, ROWS, NEUTRAL, lrs=[0.5], lms_floor=10.0, progress=False)
    assert strict.best is None
    with pytest.raises(ValueError, match="No candidate passed the LMS guard"):
        strict.merge_kwargs()
    with pytest.raises(ValueError, match="finite learning rates"):
        search_neutral_rewrite(model, tok, ROWS, NEUTRAL, lrs=[float("inf")])
    with pytest.raises(ValueError, match="neutral texts"):
        search_neutral_rewrite(model, tok, ROWS, [], lrs=[1.0])


def test_the_result_round_trips_through_json(tmp_path):
    import json

    base = _c(0.0, 0.6, 0.2)
    from gradiend_peft.evaluation.neutralise import NeutralSearchResult

    result = NeutralSearchResult(adapter_name="a", rows=4, lms_floor=0.99, base=base,
                                 candidates=[_c(1.0, 0.1, 0.2)], best=None)
    result.best = result.candidates[0]
    data = json.loads(open(result.save_json(str(tmp_path / "n.json")), encoding="utf-8").read())
    assert data["best"]["lr"] == 1.0 and data["base"]["mean_log_odds"] == 0.6 and len(data["candidates"]) == 1
    assert "chosen" in result.summary().splitlines()[2] and result.merge_kwargs() == {"feature_factor": 0.0, "lr": 1.0}


def test_select_neutral_keeps_the_controls_accuracy_and_margin():
    base = NeutralCandidate(0.0, 0.0, 0.6, 0.5, 0.2, control_accuracy=1.0, control_margin=4.0)
    # hand: lr 1 loses a control row (0.99 < 1.0 x 1.0); lr 2 keeps margin 3.5 >= 0.9 x 4 = 3.6? no: 3.5 < 3.6
    candidates = [NeutralCandidate(0.0, 1.0, 0.01, 0.5, 0.2, control_accuracy=0.99, control_margin=3.9),
                  NeutralCandidate(0.0, 2.0, 0.02, 0.5, 0.2, control_accuracy=1.0, control_margin=3.5),
                  NeutralCandidate(0.0, 3.0, 0.30, 0.5, 0.2, control_accuracy=1.0, control_margin=3.7)]
    assert select_neutral(candidates, base, 0.99) is candidates[2]
    assert select_neutral(candidates, base, 0.99, control_floor=0.98, margin_floor=0.85) is candidates[0]


def test_the_search_measures_controls_as_measure_rewrites_does():
    from gradiend_peft.evaluation import measure_rewrites

    model = get_peft_model(tiny_gpt2(), GradiendConfig(init_seed=0, target_modules=r".*h\.1\.mlp\.c_.*"))
    tok = word_tokenizer("gpt2")
    control = [{"text": "my mother said that [MASK] would come .", "factual": "she", "alternative": "he",
                "factual_class": "F", "alternative_class": "M", "label": -1.0},
               {"text": "my father said that [MASK] went home .", "factual": "he", "alternative": "she",
                "factual_class": "M", "alternative_class": "F", "label": 1.0}]
    classes = {"M": ["he"], "F": ["she"]}
    result = search_neutral_rewrite(model, tok, ROWS, NEUTRAL, lrs=[5.0], control=control, classes=classes,
                                    lms_floor=0.0, progress=False)
    measured = measure_rewrites(model, control, NEUTRAL, [(0.0, 0.0), (0.0, 5.0)], tokenizer=tok, control=control,
                                classes=classes)
    for candidate, (metrics, _) in zip([result.base, result.candidates[0]], measured):
        assert candidate.control_accuracy == pytest.approx(metrics.control_accuracy)
        assert candidate.control_margin == pytest.approx(metrics.control_margin, abs=1e-5)
    assert result.candidates[0].control_margin != pytest.approx(result.base.control_margin, abs=1e-6)
    assert "control acc" in result.summary()
