"""Metric functions against hand computations: slot probabilities, LMS (masked and causal), statistics, evaluate."""

import math

import pytest
import torch
from torch import nn

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

from tiny import tiny_gpt2, word_tokenizer


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
    n_predicted = sum(len(tok(t)["input_ids"]) - 1 for t in texts)
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
    for text in texts:  # plain loop: transformers shifts the labels itself
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    result = language_modeling_score(model, prepare_lms(texts, tok, "causal_lm", batch_size=2))
    assert result.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert result.lms == pytest.approx(1 / (1 + total / count), rel=1e-5)


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
