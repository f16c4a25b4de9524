"""Forward-only scores of a (rewritten) language model, all from one forward pass and one input convention:

- `gradiend_peft.evaluation.scoring.slot_probabilities`: class probabilities at a row's ``[MASK]`` slot
  (`prepare_slots`, `slot_probabilities`) and the bias indices over them;
- `gradiend_peft.evaluation.scoring.language_modeling_score`: the LMS on neutral text (`prepare_lms`,
  `language_modeling_score`);
- `gradiend_peft.evaluation.scoring.likelihood`: sentence log-likelihoods (causal) and pseudo-log-likelihoods
  (masked), what the bias benchmarks score;
- `gradiend_peft.evaluation.scoring.filled_rows`: per-row log-odds of two fillers of a slot, scored as whole
  sentences (rows whose fillers are free words);
- `gradiend_peft.evaluation.scoring.forward`: the shared pieces (`logits_of`, the causal lead, padded batches,
  per-token negative log-likelihood).

**The causal-LM input convention (BOS).** A text is the tokenizer's own encoding of it: the special tokens the
tokenizer itself puts in front (Llama's and Gemma's ``<bos>``; GPT-2 and SmolLM2 put none) are kept, nothing is put
after it (no EOS). A token is predicted from the tokens before it, the logits at ``t - 1`` predicting token ``t``.
When the first token that must be predicted would have nothing before it, the tokenizer's BOS token is put in front:

- a whole text (a benchmark sentence, a neutral text of the LMS) is scored from its first token on, so a tokenizer
  that puts nothing in front gets its BOS there (SmolLM2: ``<|im_start|>``; GPT-2: ``<|endoftext|>``); without a BOS
  token the first token is context only and is not scored;
- a slot is predicted from the text before it (its prefix), which gets no BOS unless the slot starts the text (then
  it is predicted from the BOS alone; without a BOS token such a row is refused). This is exactly the input of the
  causal training collator (`gradiend_peft.data.CausalLMCollator`), so that a rewrite is measured where its
  gradients were taken.

So for a tokenizer that puts a BOS itself every input starts with it; for one that does not, whole texts start with
BOS and slot prefixes do not. Masked LMs use the tokenizer's encoding with its special tokens (``[CLS] .. [SEP]``),
which are never scored or masked.
"""

from .forward import causal_lead_ids, causal_text_ids, causal_token_nll, label_batches, logits_of
from .filled_rows import filled_row_log_odds, filled_texts
from .language_modeling_score import (
    LMSInputs,
    LMSResult,
    language_modeling_score,
    lms_token_scores,
    masked_token_predictions,
    prepare_lms,
)
from .likelihood import (
    SentenceScore,
    causal_log_likelihoods,
    conditional_log_likelihoods,
    infer_objective,
    masked_word_log_probs,
    pseudo_log_likelihoods,
    sentence_log_likelihoods,
    shared_token_pseudo_log_likelihoods,
)
from .slot_probabilities import SlotInputs, bias_indices, class_words_from_rows, prepare_slots, slot_probabilities

__all__ = [
    "LMSInputs",
    "LMSResult",
    "SentenceScore",
    "SlotInputs",
    "bias_indices",
    "causal_lead_ids",
    "causal_log_likelihoods",
    "causal_text_ids",
    "causal_token_nll",
    "class_words_from_rows",
    "filled_row_log_odds",
    "filled_texts",
    "conditional_log_likelihoods",
    "infer_objective",
    "label_batches",
    "language_modeling_score",
    "lms_token_scores",
    "logits_of",
    "masked_token_predictions",
    "masked_word_log_probs",
    "prepare_lms",
    "prepare_slots",
    "pseudo_log_likelihoods",
    "sentence_log_likelihoods",
    "shared_token_pseudo_log_likelihoods",
    "slot_probabilities",
]
