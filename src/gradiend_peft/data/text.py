"""Reading text sources and splitting them into sentences.

Sources accepted everywhere in :mod:`gradiend_peft.data`:

- a list (or any iterable) of strings;
- a path to a text file (``str`` or :class:`os.PathLike`; ``.gz`` files are read transparently), one
  text per line;
- a :class:`datasets.Dataset`, with ``text_column`` naming the column that holds the text;
- a Hugging Face Hub dataset id (``str`` that is not an existing file), loaded with
  :func:`datasets.load_dataset` (``dataset_config`` and ``dataset_split`` pick the configuration and
  split). This needs network access.

Sentence splitting is rule-based: a sentence ends at ``.``, ``!``, ``?`` or ``…`` (closing quotes
and brackets stay with it) followed by whitespace and an upper-case letter, a digit or an opening
quote. Common abbreviations ("Mr.", "Dr.", "e.g.", "z.B.") and single-letter initials do not end a
sentence; a blank line always does. Whitespace inside a sentence is collapsed to single spaces.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Union

__all__ = ["TextSource", "split_sentences", "iter_texts", "iter_sentences", "counted"]

logger = logging.getLogger(__name__)

TextSource = Union[str, os.PathLike, Iterable[str], "datasets.Dataset"]  # noqa: F821

_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr vs etc e.g i.e cf fig no nos vol approx ca
    z.b d.h u.a usw bzw vgl evtl ggf hr fr nr str inkl bsp s.o u.ä""".split()
)
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’»«)\]]*\s+")
_OPENERS = "\"'“„‘«»(["


def _ends_with_abbreviation(text: str) -> bool:
    """Whether ``text`` (ending in a period) ends with a known abbreviation or an initial."""
    last = text.rsplit(None, 1)[-1].lstrip(_OPENERS)
    stem = last[:-1].lower() if last.endswith(".") else ""
    if not stem:
        return False
    return stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split a text into sentences.

    Args:
        text: any text; paragraphs separated by blank lines never share a sentence.

    Returns:
        The non-empty sentences, each with its whitespace collapsed to single spaces.

    Examples:
        >>> split_sentences("Dr. Smith came home. It was late!  “Why?” they asked.")
        ['Dr. Smith came home.', 'It was late!', '“Why?” they asked.']
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _BOUNDARY.finditer(paragraph):
            end = match.end()
            if end >= len(paragraph):
                break
            following = paragraph[end:].lstrip(_OPENERS)[:1]
            if not (following.isupper() or following.isdigit()):
                continue
            candidate = paragraph[start:end].rstrip()
            if candidate.endswith(".") and _ends_with_abbreviation(candidate):
                continue
            sentences.append(candidate)
            start = end
        tail = paragraph[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{where} is a {type(text).__name__}, not a string ({text!r:.60}); give texts as strings "
            "(for a datasets.Dataset, name the text column with text_column=...)."
        )
    return text


def _read_lines(path: str | os.PathLike) -> Iterator[str]:
    """The file's lines, without their newline.

    Raises:
        ValueError: for a file that is not UTF-8 text (a binary file), naming the file, the line and the byte.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")
    except UnicodeDecodeError as err:
        with opener(path, "rb") as raw:  # the decoder reads ahead in blocks: find the line in the bytes
            for number, line in enumerate(raw, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    where = f"line {number}, byte {bad.start + 1} ({line[bad.start:bad.start + 1]!r}: {bad.reason})"
                    break
            else:  # pragma: no cover - the text decoder and the line decoder agree
                where = str(err)
        raise ValueError(
            f"text file {os.fspath(path)!r} is not UTF-8 text: {where}. Give a UTF-8 text file, one text per line "
            "(convert another encoding with e.g. iconv -f latin1 -t utf-8), not a binary file."
        ) from err


def _is_dataset(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    if isinstance(obj, datasets.DatasetDict):
        raise TypeError(
            f"got a DatasetDict with splits {list(obj)}; pass one split, e.g. source['train'], with text_column=..."
        )
    return isinstance(obj, datasets.Dataset)


def iter_texts(
    source: TextSource,
    *,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
) -> Iterator[str]:
    """Yield the raw texts of a source (see the module docstring for the kinds of source).

    Raises:
        TypeError: for a source of another kind or a text that is not a string (naming its position).
        ValueError: for a dataset without ``text_column``.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text file {path!r} does not exist.")
        logger.info("reading texts from %s (one text per line)", path)
        yield from _read_lines(path)
        return
    if isinstance(source, str):
        yield from _iter_hub(source, text_column, dataset_config, dataset_split)
        return
    if _is_dataset(source):
        if text_column not in source.column_names:
            raise ValueError(
                f"the dataset has no column {text_column!r}; its columns are {source.column_names}. "
                "Name the text column with text_column=..."
            )
        for i, text in enumerate(source[text_column]):
            yield _check_text(text, f"row {i} of column {text_column!r}")
        return
    if isinstance(source, (bytes, dict)) or not isinstance(source, Iterable):
        raise TypeError(
            f"cannot read texts from a {type(source).__name__}; give a list of strings, a text file path, "
            "a datasets.Dataset (with text_column=...) or a Hub dataset id."
        )
    for i, text in enumerate(source):
        yield _check_text(text, f"text {i}")


def _iter_hub(dataset_id: str, text_column: str, config: str | None, split: str) -> Iterator[str]:
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", dataset_id):
        raise FileNotFoundError(
            f"{dataset_id[:80]!r} is neither an existing file nor a Hub dataset id. To mine raw text, pass a "
            "list of strings, e.g. [text]."
        )
    import datasets

    logger.info("loading Hub dataset %s (config=%s, split=%s)", dataset_id, config, split)
    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # network, missing dataset, missing config
        raise ValueError(
            f"could not load {dataset_id!r}: it is not a local file, and loading it as a Hub dataset failed "
            f"({type(err).__name__}: {err}). Pass a list of strings or a file path for local text."
        ) from err
    yield from iter_texts(dataset, text_column=text_column)


def iter_sentences(
    source: TextSource,
    *,
    split: bool = True,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
) -> Iterator[str]:
    """Yield the sentences of a source: each text split with :func:`split_sentences` (``split=True``),
    or each text with its whitespace collapsed (``split=False``). Empty texts yield nothing."""
    for text in iter_texts(source, text_column=text_column, dataset_config=dataset_config, dataset_split=dataset_split):
        if split:
            yield from split_sentences(text)
        else:
            text = " ".join(text.split())
            if text:
                yield text


def counted(sentences: Iterable[str], stats: Counter, *, deduplicate: bool) -> Iterator[str]:
    """Yield ``sentences``, counting them in ``stats["sentences"]``; with ``deduplicate``, skip (and
    count in ``stats["duplicates"]``) any sentence identical to an earlier one."""
    seen: set[str] = set()
    for sentence in sentences:
        stats["sentences"] += 1
        if deduplicate:
            if sentence in seen:
                stats["duplicates"] += 1
                continue
            seen.add(sentence)
        yield sentence
