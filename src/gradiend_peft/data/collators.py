"""Collators: mined rows to model inputs and label positions, per model family.

Both collators take a list of rows (dicts with ``text``, ``factual``, ``alternative`` and optionally
``label``; other keys are ignored) and return a dict of tensors with exactly these keys:

- ``input_ids``, ``attention_mask``: ``LongTensor (B, T)``, right-padded to the longest row of the
  batch, whatever ``tokenizer.padding_side`` says;
- ``factual_labels``, ``alternative_labels``: ``LongTensor (B, T)``, ``-100`` everywhere except at the
  positions whose logits must predict the label token. Nobody shifts these later: the collator puts
  each label where the prediction happens;
- ``label``: ``FloatTensor (B,)``, the row's ``label`` (``0.0`` when a row has none).

A target's tokens are always computed in context, as the tokenizer would produce them in the text:
the tokens of ``context + word`` minus the tokens of ``context`` (so a byte-level BPE gets ``" der"``
after a space and ``"Der"`` at the start of a text).

Masked LM (:class:`MaskedLMCollator`): the ``[MASK]`` slot becomes ``m`` mask tokens, ``m`` the larger
of the factual's and the alternative's piece counts; each label sequence fills the first of those
positions with its pieces, and a word shorter than ``m`` pieces gets ``-100`` on the remaining masks.

Causal LM (:class:`CausalLMCollator`): the input is only the text before the slot, trailing whitespace
stripped, with the special tokens the tokenizer puts at the start of a text (e.g. Llama's BOS); both
labels sit at the last input position, ``len(prefix_tokens) - 1``, because the logits there predict the
next token. The target must be a single token after that prefix; a factual or alternative that the
tokenizer splits is refused with a ``ValueError`` naming the word and its pieces. A slot at the very
start of a text is predicted from the BOS token alone when the tokenizer has one (also when it does
not add it itself, like GPT-2); without a BOS token such a row is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from ..tuner.constants import IGNORE_INDEX, OBJECTIVES
from .feature import MASK_PLACEHOLDER, Feature

__all__ = ["OBJECTIVES", "MaskedLMCollator", "CausalLMCollator", "collator_for", "check_single_token"]

logger = logging.getLogger(__name__)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def target_pieces(tokenizer: Any, context: str, word: str) -> list[int]:
    """The token ids of ``word`` where it follows ``context`` (which includes any space before ``word``).

    Computed as ``tokens(context + word)`` minus ``tokens(context.rstrip())``: the whitespace between
    context and word goes with the word, as BPE and SentencePiece tokenizers attach it.

    Raises:
        ValueError: when the context's tokens change once the word is appended (the word merges
            with the text before it), so that the word has no tokens of its own.
    """
    head = context.rstrip()
    base = _ids(tokenizer, head)
    full = _ids(tokenizer, context + word)
    if full[: len(base)] != base or len(full) == len(base):
        raise ValueError(
            f"cannot separate target {word!r} from the text before it ({head[-40:]!r}): the tokenizer merges them "
            f"({tokenizer.convert_ids_to_tokens(full[-4:])}). Put a space or punctuation before the slot."
        )
    return full[len(base) :]


def _split_row(row: Any, index: int) -> tuple[str, str, str, str, float]:
    """Validate a row and return (prefix, suffix, factual, alternative, label)."""
    if not isinstance(row, Mapping):
        raise TypeError(f"row {index} is a {type(row).__name__}; collators take dicts with text/factual/alternative.")
    missing = [k for k in ("text", "factual", "alternative") if k not in row]
    if missing:
        raise KeyError(
            f"row {index} has no {missing}; collators need the columns of mine_pairs (text, factual, alternative, "
            "label). With transformers' Trainer set remove_unused_columns=False."
        )
    text, factual, alternative = row["text"], row["factual"], row["alternative"]
    if not isinstance(text, str) or text.count(MASK_PLACEHOLDER) != 1:
        raise ValueError(f"row {index}: text must contain exactly one {MASK_PLACEHOLDER!r} slot; got {text!r}.")
    for name, word in (("factual", factual), ("alternative", alternative)):
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"row {index}: {name} must be a non-empty string; got {word!r}.")
    prefix, suffix = text.split(MASK_PLACEHOLDER)
    label = row.get("label")
    return prefix, suffix, factual, alternative, 0.0 if label is None else float(label)


class _SlotCollator:
    """Shared padding, length checks and tensor building; subclasses implement :meth:`encode`.

    Args:
        tokenizer: the model's tokenizer.
        max_length (`int`, *optional*): the most tokens a row may have (the model's positions); ``None``: no limit.
        truncation (`bool`): what happens to a longer row: ``False`` (default) refuses it with a ``ValueError``
            naming the row; ``True`` keeps the ``max_length`` tokens nearest the slot (and the special tokens at
            the ends).
    """

    objective: str = ""

    def __init__(self, tokenizer: Any, max_length: Optional[int] = None, truncation: bool = False) -> None:
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(f"expected a transformers tokenizer, got {type(tokenizer).__name__}.")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 2):
            raise ValueError(f"max_length must be an integer >= 2 or None, got {max_length!r}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = bool(truncation)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)

    def encode(self, row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_known(self, pieces: Sequence[int], word: str, name: str, index: int) -> None:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is not None and unk in pieces and word != getattr(self.tokenizer, "unk_token", None):
            raise ValueError(
                f"row {index}: the {name} {word!r} is not in the tokenizer's vocabulary (it becomes "
                f"{self.tokenizer.convert_ids_to_tokens(list(pieces))}); training on it would train on the unknown "
                "token. Choose target words the tokenizer knows, or drop these rows."
            )

    def _fit(self, encoded: dict[str, Any], row: Mapping[str, Any], index: int) -> dict[str, Any]:
        """Refuses or truncates a row longer than ``max_length`` (see the class docstring)."""
        ids = encoded["input_ids"]
        if self.max_length is None or len(ids) <= self.max_length:
            return encoded
        if not self.truncation:
            raise ValueError(
                f"row {index} is {len(ids)} tokens, more than max_length={self.max_length} (the model's positions): "
                f"{str(row.get('text'))[:80]!r}... Drop the row, or truncate it to the tokens nearest the slot "
                "(collator_for(..., truncation=True); GradiendTrainingArguments(truncate_long_rows=True))."
            )
        specials = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        head = 0
        while head < len(ids) and ids[head] in specials and not self._is_slot(ids[head]):
            head += 1
        tail = 0
        while tail < len(ids) - head and ids[-1 - tail] in specials and not self._is_slot(ids[-1 - tail]):
            tail += 1
        width = self.max_length - head - tail
        positions = [p for key in ("factual_labels", "alternative_labels") for p, _ in encoded[key]]
        low, high = min(positions) - head, max(positions) - head
        middle = len(ids) - head - tail
        if width <= 0 or high - low + 1 > width:
            raise ValueError(f"row {index}: its slot alone needs more than max_length={self.max_length} tokens.")
        # the window [start, start + width) of the middle tokens must hold every label position; centred on them
        lowest, highest = max(0, high - width + 1), min(low, middle - width)
        start = min(max((low + high) // 2 - width // 2, lowest), highest)
        out = dict(encoded)
        out["input_ids"] = ids[:head] + ids[head + start : head + start + width] + ids[len(ids) - tail :]
        for key in ("factual_labels", "alternative_labels"):
            out[key] = [(p - start, t) for p, t in encoded[key]]
        return out

    def _is_slot(self, token: int) -> bool:
        return token == getattr(self.tokenizer, "mask_token_id", None) and self.objective == "masked_lm"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch.")
        encoded = [self._fit(self.encode(row, i), row, i) for i, row in enumerate(rows)]
        width = max(len(e["input_ids"]) for e in encoded)
        batch = {
            "input_ids": torch.full((len(rows), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "factual_labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
            "alternative_labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        }
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            batch["attention_mask"][i, :n] = 1
            for key in ("factual_labels", "alternative_labels"):
                for position, token in e[key]:
                    batch[key][i, position] = token
        batch["label"] = torch.tensor([e["label"] for e in encoded], dtype=torch.float)
        return batch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}, pad_token_id={self.pad_token_id})"


class MaskedLMCollator(_SlotCollator):
    """Collator for masked LMs (BERT, RoBERTa, DistilBERT...): mask token(s) at the slot, labels there.

    Args:
        tokenizer: a tokenizer with a ``mask_token``.

    Raises:
        ValueError: when the tokenizer has no mask token.

    Examples:
        >>> batch = MaskedLMCollator(tok)([{"text": "[MASK] Hund kam.", "factual": "Der", "alternative": "Die", "label": 1.0}])
        >>> sorted(batch)
        ['alternative_labels', 'attention_mask', 'factual_labels', 'input_ids', 'label']
    """

    objective = "masked_lm"

    def __init__(self, tokenizer: Any, max_length: Optional[int] = None, truncation: bool = False) -> None:
        super().__init__(tokenizer, max_length, truncation)
        if getattr(tokenizer, "mask_token", None) is None or tokenizer.mask_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no mask_token, so it cannot fill a [MASK] slot. Use a masked-LM "
                "tokenizer, or CausalLMCollator / collator_for(tokenizer, 'causal_lm') for a causal LM."
            )

    def encode(self, row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        """One row as ``input_ids`` (with special tokens), label ``(position, token)`` lists and ``label``."""
        prefix, suffix, factual, alternative, label = _split_row(row, index)
        tok = self.tokenizer
        pieces = {
            "factual_labels": target_pieces(tok, prefix, factual),
            "alternative_labels": target_pieces(tok, prefix, alternative),
        }
        self._check_known(pieces["factual_labels"], factual, "factual", index)
        self._check_known(pieces["alternative_labels"], alternative, "alternative", index)
        n_masks = max(len(p) for p in pieces.values())
        input_ids = list(tok(prefix + tok.mask_token * n_masks + suffix)["input_ids"])
        positions = [i for i, t in enumerate(input_ids) if t == tok.mask_token_id]
        if len(positions) != n_masks:
            raise ValueError(
                f"row {index}: expected {n_masks} mask token(s) in the encoded text, found {len(positions)} "
                f"(does the text contain {tok.mask_token!r} itself?): {row['text']!r}."
            )
        out = {key: list(zip(positions, p)) for key, p in pieces.items()}
        out.update(input_ids=input_ids, label=label)
        return out


class CausalLMCollator(_SlotCollator):
    """Collator for causal LMs (GPT-2, Llama, Gemma...): the text before the slot; labels at its last token.

    Args:
        tokenizer: any tokenizer. The target words of every row must be single tokens after their
            prefix; see the module docstring.
    """

    objective = "causal_lm"

    def __init__(self, tokenizer: Any, max_length: Optional[int] = None, truncation: bool = False) -> None:
        super().__init__(tokenizer, max_length, truncation)
        self.leading_ids = self._leading_special_ids(tokenizer)

    @staticmethod
    def _leading_special_ids(tokenizer: Any) -> list[int]:
        """The ids the tokenizer puts before a text's own tokens (e.g. ``[BOS]``), found on a probe text."""
        probe = "a"
        plain = _ids(tokenizer, probe)
        full = list(tokenizer(probe)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    def _single_token(self, context: str, word: str, name: str, index: int, text: str) -> int:
        pieces = target_pieces(self.tokenizer, context, word)
        if len(pieces) != 1:
            raise ValueError(
                f"row {index}: the {name} {word!r} is {len(pieces)} tokens for this tokenizer after its prefix "
                f"({self.tokenizer.convert_ids_to_tokens(pieces)}); a causal LM predicts one next token, so the row "
                f"cannot be used: {text!r}. Choose single-token target words (check_single_token helps) or filter "
                "these rows out."
            )
        self._check_known(pieces, word, name, index)
        return pieces[0]

    def encode(self, row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        """One row as prefix ``input_ids``, label ``(position, token)`` lists and ``label``."""
        prefix, _, factual, alternative, label = _split_row(row, index)
        input_ids = self.leading_ids + _ids(self.tokenizer, prefix.rstrip())
        if not input_ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError(
                    f"row {index}: the slot is at the very start of {row['text']!r} and the tokenizer has no BOS "
                    "token, so a causal LM has nothing to predict it from. Mine with min_context_words=1."
                )
            input_ids = [bos]
        position = len(input_ids) - 1
        text = row["text"]
        return {
            "input_ids": input_ids,
            "factual_labels": [(position, self._single_token(prefix, factual, "factual", index, text))],
            "alternative_labels": [(position, self._single_token(prefix, alternative, "alternative", index, text))],
            "label": label,
        }


def collator_for(tokenizer: Any, objective: str, max_length: Optional[int] = None,
                 truncation: bool = False) -> MaskedLMCollator | CausalLMCollator:
    """The collator for ``objective``: ``"masked_lm"`` or ``"causal_lm"`` (``max_length`` and ``truncation``: see
    the collators)."""
    if objective == "masked_lm":
        return MaskedLMCollator(tokenizer, max_length, truncation)
    if objective == "causal_lm":
        return CausalLMCollator(tokenizer, max_length, truncation)
    raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}.")


def check_single_token(tokenizer: Any, words: Feature | Iterable[str]) -> dict[str, list[str]]:
    """The target forms that ``tokenizer`` splits into several tokens, with their pieces.

    Each word is tried mid-sentence after a space (as written in the feature, after ``"And"``) and
    capitalised at the start of a text, the two usual places of a pronoun.

    Args:
        tokenizer: a transformers tokenizer.
        words: a :class:`~gradiend_peft.data.Feature` (all its words) or a list of words.

    Returns:
        ``{form: pieces}`` for every form that is not a single token, the form written as it stands in
        the text (``" die"`` mid-sentence, ``"Die"`` at the start); empty when all are single tokens.

    Examples:
        >>> check_single_token(gpt2_tokenizer, ["it", "nurse"])
        {' nurse': ['Ġn', 'urse'], 'Nurse': ['N', 'urse']}
    """
    words = words.words if isinstance(words, Feature) else list(words)
    result: dict[str, list[str]] = {}
    for word in words:
        for context, form, key in (("And ", word, " " + word), ("", word[:1].upper() + word[1:], None)):
            pieces = target_pieces(tokenizer, context, form)
            if len(pieces) != 1:
                result[key or form] = tokenizer.convert_ids_to_tokens(pieces)
    return result
