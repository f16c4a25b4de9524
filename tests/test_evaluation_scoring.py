"""The forward-only scores (`gradiend_peft.evaluation.scoring`) against hand computations and independent per-text
float64 loops: slot probabilities, LMS (masked and causal), sentence log-likelihoods and pseudo-log-likelihoods, the
one causal input convention they share, statistics, the evaluate scripts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from tokenizers import processors
from torch import nn

from gradiend_peft import GradiendConfig
from gradiend_peft.objective import pearson, sign_accuracy
from gradiend_peft.evaluation import (
    bias_indices,
    class_words_from_rows,
    language_modeling_score,
    lms_token_scores,
    masked_token_predictions,
    metric_path,
    prepare_lms,
    prepare_slots,
    slot_probabilities,
)
from gradiend_peft.bias.benchmarks import blank_fill_spans
from gradiend_peft.evaluation.scoring import (
    causal_log_likelihoods,
    conditional_log_likelihoods,
    infer_objective,
    masked_word_log_probs,
    pseudo_log_likelihoods,
    shared_token_pseudo_log_likelihoods,
)

from oracles import f32_tol, oracle_causal, oracle_next_token_probs, oracle_pll
from tiny import CORPUS, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta, word_tokenizer

TEXTS = [CORPUS[0], "The dog ran.", CORPUS[5], "The", "she", CORPUS[2], "My mother likes the old red car and the big house."]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread while a test runs: on a shared 2-core machine two threads ran these tests up to 90x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class PositionTable(nn.Module):
    """Logits that depend on the position only: ``logits[b, t] = table[t]``."""

    def __init__(self, vocab, length=40, seed=0):
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, vocab, generator=torch.Generator().manual_seed(seed)) * 3)

    def forward(self, input_ids, attention_mask=None):
        return (self.table[: input_ids.shape[1]].unsqueeze(0).expand(input_ids.shape[0], -1, -1),)


class Constant(nn.Module):
    """Always predicts ``token`` (logit 10, all others 0)."""

    def __init__(self, vocab, token):
        super().__init__()
        self.vocab, self.token = vocab, token
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 10.0
        return (logits,)


class Peek(nn.Module):
    """Cheats: the logits at position t put 10 on the token at t + 1 (the right answer only with the right shift)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        logits.scatter_(2, nxt.unsqueeze(-1), 10.0)
        return (logits,)


ROWS = [
    {"text": "the nurse said that [MASK] would come .", "factual": "she", "factual_class": "F", "alternative": "he",
     "alternative_class": "M"},
    {"text": "my father said that [MASK] went home .", "factual": "he", "factual_class": "M", "alternative": "she",
     "alternative_class": "F"},
    {"text": "then [MASK] ran .", "factual": "he", "factual_class": "M", "alternative": "she", "alternative_class": "F"},
]
CLASSES = {"F": ["she", "her"], "M": ["he", "him"]}


def test_class_words_come_from_both_columns():
    assert class_words_from_rows(ROWS) == {"F": ["she"], "M": ["he"]}
    with pytest.raises(ValueError, match="class"):
        class_words_from_rows([{"text": "[MASK]", "factual": "he"}])


def test_masked_lm_slot_probability_sums_class_tokens_at_the_mask():
    tok = word_tokenizer("bert")
    model = PositionTable(len(tok))
    slots = prepare_slots(ROWS, tok, "masked_lm", classes=CLASSES, batch_size=2)
    probs = slot_probabilities(model, slots)
    assert slots.classes == ("F", "M") and slots.row_classes == ("F", "M", "M")
    for i, row in enumerate(ROWS):
        prefix = row["text"].split("[MASK]")[0]
        position = 1 + len(tok(prefix, add_special_tokens=False)["input_ids"])  # [CLS] + the prefix
        p = torch.softmax(model.table[position].double(), dim=0)
        for j, words in enumerate(CLASSES.values()):
            expected = sum(p[tok.convert_tokens_to_ids(w)] for w in words)
            assert probs[i, j].item() == pytest.approx(expected.item(), rel=1e-5)


def test_causal_lm_slot_probability_is_read_at_the_last_prefix_token():
    tok = word_tokenizer("gpt2")
    model = PositionTable(len(tok))
    probs = slot_probabilities(model, prepare_slots(ROWS, tok, "causal_lm", classes=CLASSES))
    for i, row in enumerate(ROWS):
        prefix = row["text"].split("[MASK]")[0].rstrip()
        position = len(tok(prefix)["input_ids"]) - 1  # the logits there predict the slot's token
        p = torch.softmax(model.table[position].double(), dim=0)
        for j, words in enumerate(CLASSES.values()):
            expected = sum(p[tok(" " + w)["input_ids"][0]] for w in words)  # first token of " she", " her"...
            assert probs[i, j].item() == pytest.approx(expected.item(), rel=1e-5)


def test_causal_lm_class_words_take_the_rows_casing_and_a_bos_starts_an_empty_prefix():
    tok = word_tokenizer("gpt2")
    model = PositionTable(len(tok))
    row = {"text": "[MASK] ran home .", "factual": "He", "factual_class": "M"}
    slots = prepare_slots([row], tok, "causal_lm", classes={"F": ["she"], "M": ["he"]})
    assert slots.batches[0]["input_ids"].tolist() == [[tok.bos_token_id]]
    probs = slot_probabilities(model, slots)
    p = torch.softmax(model.table[0].double(), dim=0)
    she, he = tok("She")["input_ids"][0], tok("He")["input_ids"][0]
    assert she != he and she != tok("she")["input_ids"][0]
    assert probs[0, 0].item() == pytest.approx(p[she].item(), rel=1e-5)
    assert probs[0, 1].item() == pytest.approx(p[he].item(), rel=1e-5)


def test_masked_lms_never_masks_special_tokens_and_masks_fifteen_percent():
    tok = word_tokenizer("bert")
    texts = ["the nurse said that the dog ran home when it was night and the cat ran with it .",
             "[PAD] the [UNK] dog ran [SEP] home .", "a b"]
    inputs = prepare_lms(texts, tok, "masked_lm", seed=3, batch_size=8)
    specials = set(tok.all_special_ids)
    masked_total = 0
    rows = [row for batch in inputs.batches
            for row in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]
    assert len(rows) == len(texts)
    for ids, labels, attention in rows:
        original = torch.where(labels != -100, labels, ids)[attention.bool()].tolist()
        maskable = [t for t in original[1:-1] if t not in specials]  # [CLS] ... [SEP] around the text
        chosen = (labels != -100).nonzero().flatten().tolist()
        assert len(chosen) == max(1, math.floor(0.15 * len(maskable) + 0.5))
        assert all(labels[p].item() not in specials for p in chosen)
        assert all(ids[p].item() == tok.mask_token_id for p in chosen)
        assert ids[0].item() == tok.cls_token_id  # never masked
        masked_total += len(chosen)
    assert inputs.n_tokens == masked_total


def test_masked_lms_masks_are_fixed_by_the_seed():
    tok = word_tokenizer("bert")
    texts = ["the nurse said that the dog ran home when it was night and the cat ran with it ."] * 4
    labels = lambda seed: torch.cat([b["labels"] for b in prepare_lms(texts, tok, "masked_lm", seed=seed).batches])  # noqa: E731
    assert torch.equal(labels(0), labels(0))
    assert not torch.equal(labels(0), labels(1))


def test_masked_lms_is_the_accuracy_at_the_masks():
    tok = word_tokenizer("bert")
    the = tok.convert_tokens_to_ids("the")
    all_the = prepare_lms(["the " * 20], tok, "masked_lm")
    assert language_modeling_score(Constant(len(tok), the), all_the).lms == 1.0
    mixed = prepare_lms(["the dog the cat the man the woman the boy the girl the king the queen"] * 3, tok, "masked_lm")
    predicted, original = masked_token_predictions(Constant(len(tok), the), mixed)
    hits = sum(1 for t in original.tolist() if t == the)  # a constant "the" is right exactly where "the" was masked
    assert torch.equal(predicted, torch.full_like(predicted, the))
    assert language_modeling_score(Constant(len(tok), the), mixed).lms == pytest.approx(hits / len(original))
    assert lms_token_scores(Constant(len(tok), the), mixed).sum().item() == hits


def test_causal_lms_uses_the_one_position_shift():
    tok = word_tokenizer("gpt2")
    texts = ["The nurse said that she would come .", "The dog ran .", "My mother said that she went home ."]
    inputs = prepare_lms(texts, tok, "causal_lm", batch_size=2)
    # the tokenizer puts no BOS of its own: every text token is predicted, the first from the BOS put in front
    assert tok.bos_token_id is not None and tok("The")["input_ids"] == tok("The", add_special_tokens=False)["input_ids"]
    n_predicted = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    result = language_modeling_score(Peek(len(tok)), inputs)
    nll = math.log(1 + (len(tok) - 1) * math.exp(-10))  # -log softmax of a 10 against V-1 zeros
    # float32 forms logsumexp(z) - z_true = (10 + nll) - 10: a few rounding steps of numbers near 10, whatever the
    # kernel path (AVX2 and AVX-512 differ in the last bits), so the error bound is absolute, not relative to nll
    tolerance = 8 * torch.finfo(torch.float32).eps * 10
    assert result.n_tokens == inputs.n_tokens == n_predicted
    assert result.mean_nll == pytest.approx(nll, abs=tolerance)
    assert result.lms == pytest.approx(1 / (1 + nll), abs=tolerance)
    assert result.perplexity == pytest.approx(math.exp(nll), abs=2 * tolerance)


def test_causal_lms_matches_the_models_own_loss():
    tok = word_tokenizer("gpt2")
    model = tiny_gpt2()
    texts = ["The nurse said that she would come .", "The dog ran .", "My mother said that she went home ."]
    total, count = 0.0, 0
    for text in texts:  # plain loop: transformers shifts the labels itself; BOS in front (the convention)
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    result = language_modeling_score(model, prepare_lms(texts, tok, "causal_lm", batch_size=2))
    assert result.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert result.lms == pytest.approx(1 / (1 + total / count), rel=1e-5)


# ------------------------------------------------------------------------------------------- causal likelihood
@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("with_bos", [True, False])
def test_causal_log_likelihood_matches_a_float64_loop(builder, with_bos):
    tok = word_tokenizer("gpt2")
    if not with_bos:
        tok = copy.deepcopy(tok)
        tok.bos_token = None
        assert tok.bos_token_id is None
    model = builder()
    model64 = copy.deepcopy(model).double()
    texts = [t for t in TEXTS if with_bos or len(tok(t)["input_ids"]) > 1]
    scores = causal_log_likelihoods(model, tok, texts, batch_size=4, progress=False)
    for text, score in zip(texts, scores):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if with_bos:
            ids = [tok.bos_token_id] + ids
        expected = oracle_causal(model64, ids, first_scored=1)
        assert score.n_tokens == len(ids) - 1
        assert score.total == pytest.approx(expected, abs=f32_tol(score.n_tokens, [expected / score.n_tokens]))
        assert score.mean == pytest.approx(score.total / score.n_tokens, rel=1e-12)
    if not with_bos:
        with pytest.raises(ValueError, match="no token to score"):
            causal_log_likelihoods(model, tok, ["The"], progress=False)  # one token


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama])
def test_padding_and_batching_do_not_change_a_causal_score(builder):
    tok = word_tokenizer("gpt2")
    model = builder().double()  # float64 end to end: batched and single runs may differ only by float64 rounding
    batched = causal_log_likelihoods(model, tok, TEXTS, batch_size=len(TEXTS), progress=False)
    single = [causal_log_likelihoods(model, tok, [t], batch_size=1, progress=False)[0] for t in TEXTS]
    assert len({s.n_tokens for s in single}) > 2  # different lengths, so the batch is padded
    for b, s in zip(batched, single):
        assert b.n_tokens == s.n_tokens
        assert b.total == pytest.approx(s.total, rel=1e-10, abs=1e-10)


def test_conditional_log_likelihood_scores_only_the_continuation():
    tok = word_tokenizer("gpt2")
    model = tiny_gpt2()
    model64 = copy.deepcopy(model).double()
    contexts = ["The nurse said that she would come.", "My father said", "The children ran home."]
    continuations = ["She went home.", "that he went home.", "It was night."]
    scores = conditional_log_likelihoods(model, tok, contexts, continuations, batch_size=2, progress=False)
    for context, continuation, score in zip(contexts, continuations, scores):
        head = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
        full = [tok.bos_token_id] + tok(context + " " + continuation, add_special_tokens=False)["input_ids"]
        assert full[: len(head)] == head  # the boundary is a token boundary in this tokenizer
        expected = oracle_causal(model64, full, first_scored=len(head))
        assert score.n_tokens == len(full) - len(head)
        assert score.total == pytest.approx(expected, abs=f32_tol(score.n_tokens, [expected / score.n_tokens]))


# ------------------------------------------------------------------------------------------------- masked LM
@pytest.mark.parametrize("builder", [tiny_bert, tiny_roberta])
def test_pseudo_log_likelihood_matches_an_explicit_masking_loop(builder):
    tok = word_tokenizer("bert")
    model = builder()
    model64 = copy.deepcopy(model).double()
    scores = pseudo_log_likelihoods(model, tok, TEXTS, batch_size=7, progress=False)
    for text, score in zip(TEXTS, scores):
        ids = tok(text)["input_ids"]  # [CLS] ... [SEP]
        expected = oracle_pll(model64, ids, range(1, len(ids) - 1), tok.mask_token_id)
        assert score.n_tokens == len(ids) - 2
        assert score.total == pytest.approx(expected, abs=f32_tol(score.n_tokens, [expected / score.n_tokens]))
    # only the tokens of a character span: "she" in "the nurse said that she would come ." is token 5 of [CLS] ...
    text = "the nurse said that she would come ."
    (span,) = blank_fill_spans("the nurse said that BLANK would come .", text)
    (score,) = pseudo_log_likelihoods(model, tok, [text], spans=[[span]], progress=False)
    ids = tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens([ids[5]]) == ["she"]
    expected = oracle_pll(model64, ids, [5], tok.mask_token_id)
    assert score.n_tokens == 1 and score.total == pytest.approx(expected, abs=f32_tol(1, [expected]))


def test_crows_metric_scores_the_shared_tokens_each_masked_in_turn():
    tok = word_tokenizer("bert")
    model = tiny_bert()
    model64 = copy.deepcopy(model).double()
    more, less = "the nurse said that she would come .", "the nurse said that he would come ."
    ((a, b),) = shared_token_pseudo_log_likelihoods(model, tok, [(more, less)], progress=False)
    ids_a, ids_b = tok(more)["input_ids"], tok(less)["input_ids"]
    shared = [1, 2, 3, 4, 6, 7, 8]  # all but [CLS], the pronoun at 5 and [SEP]
    assert [ids_a[p] for p in shared] == [ids_b[p] for p in shared] and ids_a[5] != ids_b[5]
    exp_a, exp_b = (oracle_pll(model64, ids, shared, tok.mask_token_id) for ids in (ids_a, ids_b))
    assert a.n_tokens == b.n_tokens == 7
    assert a.total == pytest.approx(exp_a, abs=f32_tol(7, [exp_a / 7]))
    assert b.total == pytest.approx(exp_b, abs=f32_tol(7, [exp_b / 7]))


def test_masked_word_log_probs_at_the_slot_and_refusal_of_multi_token_words():
    tok = word_tokenizer("bert")
    model = tiny_bert()
    model64 = copy.deepcopy(model).double()
    texts = ["the doctor said that [MASK] would come .", "[MASK] dog ran home ."]
    words = [["he", "she"], ["his", "her"]]
    result = masked_word_log_probs(model, tok, texts, words, progress=False)
    for text, ws, got in zip(texts, words, result):
        ids = tok(text.replace("[MASK]", tok.mask_token))["input_ids"]
        position = ids.index(tok.mask_token_id)
        with torch.no_grad():
            lp = F.log_softmax(model64(input_ids=torch.tensor([ids])).logits[0, position].double(), dim=-1)
        expected = [float(lp[tok.convert_tokens_to_ids(w)]) for w in ws]
        assert got == pytest.approx(expected, abs=f32_tol(1, expected))
    with pytest.raises(ValueError, match="single-token"):
        masked_word_log_probs(model, tok, ["the [MASK] ran ."], [["dogs", "dog"]], progress=False)


def test_objective_is_inferred_for_plain_and_peft_models():
    assert infer_objective(tiny_bert()) == infer_objective(tiny_roberta()) == "masked_lm"
    assert infer_objective(tiny_gpt2()) == infer_objective(tiny_llama()) == "causal_lm"
    peft_bert = get_peft_model(tiny_bert(), GradiendConfig(init_seed=0, feature_classes=["M", "F"]))
    assert infer_objective(peft_bert) == "masked_lm"


# ---------------------------------------------------------------------------------- the causal input convention
def _tokenizer(kind):
    """The byte-level test tokenizer as it is (a BOS token, none put in front by the tokenizer: GPT-2, SmolLM2), with
    a BOS it puts in front of every text itself (Llama, Gemma), or without any BOS token."""
    tok = copy.deepcopy(word_tokenizer("gpt2"))
    if kind == "own_bos":
        bos = tok.bos_token_id
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)])
        assert tok("The dog")["input_ids"] == [bos] + tok("The dog", add_special_tokens=False)["input_ids"]
    elif kind == "no_bos":
        tok.bos_token = None
        assert tok.bos_token_id is None
    return tok


def _expected_text_input(tok, kind, text):
    """The documented input of a whole text and the first scored position."""
    own = tok(text, add_special_tokens=False)["input_ids"]
    if kind == "no_bos":
        return own, 1  # nothing to predict the first token from: it is context only
    return [tok.bos_token_id] + own, 1  # the BOS, put by the tokenizer itself or by the convention, never twice


@pytest.mark.parametrize("kind", ["no_own_bos", "own_bos", "no_bos"])
def test_lms_and_sentence_likelihoods_score_the_same_inputs_as_a_per_text_loop(kind):
    tok = _tokenizer(kind)
    model64 = tiny_llama().double()
    texts = ["The nurse said that she would come .", "The dog ran .", "My mother said that she went home ."]
    scores = causal_log_likelihoods(model64, tok, texts, batch_size=2, progress=False)
    inputs = prepare_lms(texts, tok, "causal_lm", batch_size=2)
    for text, score in zip(texts, scores):
        ids, first = _expected_text_input(tok, kind, text)
        expected = oracle_causal(model64, ids, first)
        assert score.n_tokens == len(ids) - first
        assert score.total == pytest.approx(expected, rel=1e-9, abs=1e-9)
    rows = {int(i): row[mask.bool()].tolist() for batch in inputs.batches
            for i, row, mask in zip(batch["index"], batch["input_ids"], batch["attention_mask"])}
    assert [rows[i] for i in range(len(texts))] == [_expected_text_input(tok, kind, t)[0] for t in texts]
    # the LMS is the mean negative log-likelihood of exactly those tokens
    nll = lms_token_scores(model64, inputs)
    assert nll.numel() == inputs.n_tokens == sum(s.n_tokens for s in scores)
    assert float(nll.sum()) == pytest.approx(-sum(s.total for s in scores), rel=1e-9)
    result = language_modeling_score(model64, inputs)
    assert result.lms == pytest.approx(1 / (1 + -sum(s.total for s in scores) / inputs.n_tokens), rel=1e-9)


@pytest.mark.parametrize("kind", ["no_own_bos", "own_bos", "no_bos"])
def test_slot_probabilities_read_the_training_collators_input(kind):
    from gradiend_peft.data import CausalLMCollator

    tok = _tokenizer(kind)
    PRONOUNS = {"F": ["she"], "M": ["he"]}  # noqa: N806 - single first tokens in every casing here
    model64 = tiny_llama().double()
    # "The" is one token at the start of a text for this tokenizer (the collator needs single-token targets)
    rows = ROWS + [{"text": "[MASK] dog ran home .", "factual": "The", "factual_class": "M", "alternative": "The",
                    "alternative_class": "F"}]
    if kind == "no_bos":  # a slot that starts the text has nothing to be predicted from
        with pytest.raises(ValueError, match="no BOS"):
            prepare_slots(rows, tok, "causal_lm", classes=PRONOUNS)
        rows = rows[:-1]
    slots = prepare_slots(rows, tok, "causal_lm", classes=PRONOUNS)
    probs = slot_probabilities(model64, slots)
    collator = CausalLMCollator(tok)
    for i, row in enumerate(rows):
        ids = collator.encode(row, i)["input_ids"]  # where the gradients of this row are taken
        prefix = row["text"].split("[MASK]")[0]
        own = tok(prefix.rstrip(), add_special_tokens=False)["input_ids"]
        assert ids == ([tok.bos_token_id] if kind == "own_bos" or not own else []) + own
        p = oracle_next_token_probs(model64, ids)
        for j, words in enumerate(PRONOUNS.values()):
            cased = [w.capitalize() if row["factual"][0].isupper() else w for w in words]
            firsts = {tok((prefix + w) if prefix else w, add_special_tokens=False)["input_ids"][len(own)]
                      for w in cased}
            assert probs[i, j].item() == pytest.approx(sum(p[t].item() for t in firsts), rel=1e-9)
    if kind == "own_bos":  # the same input as the sentence's likelihood: P(slot) = exp of the word's log-likelihood
        text = "the nurse said that she would come ."
        full, head = causal_log_likelihoods(model64, tok, [text[: text.index(" would")], "the nurse said that"],
                                            progress=False)
        assert math.exp(full.total - head.total) == pytest.approx(probs[0, 0].item(), rel=1e-9)  # "she" alone in F



def test_statistics_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 0, 0, 1]) == pytest.approx(0.0)
    x, y = [0.5, -0.2, 0.9, 0.1], [1, -1, 1, -1]
    mx, my = sum(x) / 4, 0.0
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    den = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert pearson(x, y) == pytest.approx(num / den)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert sign_accuracy([0.5, -0.2, 0.0, 0.1], [1, -1, 1, -1]) == 0.5
    probs = torch.tensor([[0.6, 0.2], [0.1, 0.1]])
    got = bias_indices(probs, ["M", "F"])
    assert got["bpi"] == pytest.approx(((1 - 0.4) * 0.8 + (1 - 0.0) * 0.2) / 2)
    assert got["favour"]["M"] == pytest.approx(((1 - 0.2) * 0.6 + (1 - 0.1) * 0.1) / 2)
    assert got["favour"]["F"] == pytest.approx(((1 - 0.6) * 0.2 + (1 - 0.1) * 0.1) / 2)
    assert got["mean_abs_gap"] == pytest.approx(0.2)


def test_evaluate_metric_scripts_load_offline(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    correlation = evaluate.load(metric_path("encoder_correlation"), cache_dir=str(tmp_path))
    got = correlation.compute(predictions=[0.5, -0.2, 0.9, 0.1], references=[1, -1, 1, -1])
    assert got["pearsonr"] == pytest.approx(pearson([0.5, -0.2, 0.9, 0.1], [1, -1, 1, -1]))
    assert got["accuracy"] == 0.75
    causal = evaluate.load(metric_path("language_modeling_score"), "causal_lm", cache_dir=str(tmp_path))
    assert causal.compute(predictions=[1.0, 3.0]) == pytest.approx(
        {"lms": 1 / 3, "mean_nll": 2.0, "perplexity": math.exp(2.0), "count": 2})
    masked = evaluate.load(metric_path("language_modeling_score"), "masked_lm", cache_dir=str(tmp_path))
    assert masked.compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 0])["lms"] == 0.5
    with pytest.raises(ValueError, match="shipped metrics"):
        metric_path("pearsonr")


def test_length_batches_bound_the_padding_and_keep_every_row_once():
    from gradiend_peft.evaluation._common import length_batches

    lengths = [14, 91, 15, 30, 16, 60, 44, 14, 29, 45]
    got = length_batches(lengths, size=3, slack=1.5)
    # by hand, sorted 14 14 15 16 29 30 44 45 60 91: the first batch is full at 15; 29 > 1.5 x 16; 44 > 1.5 x 29;
    # 45 and 60 <= 1.5 x 44 fill that batch; 91 starts the last
    assert [[lengths[i] for i in batch] for batch in got] == [[14, 14, 15], [16], [29, 30], [44, 45, 60], [91]]
    assert sorted(i for batch in got for i in batch) == list(range(len(lengths)))
    assert all(lengths[b[-1]] <= 1.5 * lengths[b[0]] for b in got)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        length_batches(lengths, size=0)
