"""Text corpora shipped inside the package, so that GRADIEND runs offline.

The files live in ``gradiend_peft/corpora/`` (one sentence per line, gzip), built from Debian and
PyPI packages by ``scripts/build_corpora.py``; ``manifest.json`` there records each file's source,
licence and size, and ``README.md`` the provenance in words.

=================  ========  ===============================================================
name               language  contents
=================  ========  ===============================================================
``"english"``      en        ``"wordnet"`` + ``"web"``
``"german"``       de        ``"fortunes-de"``
``"wordnet"``      en        example sentences of WordNet 3.0 (WordNet 3.0 licence)
``"web"``          en        sentences of the World English Bible text (public domain)
``"fortunes-de"``  de        German fortune cookies of Debian's fortunes-de (GPL-2.0-or-later)
=================  ========  ===============================================================

The folder also holds data files of the bias study (first-name lists, a table of jobs), read by
`gradiend_peft.bias`.
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from typing import Any

__all__ = ["available_corpora", "corpus_info", "load_corpus"]


def _folder():
    return resources.files("gradiend_peft").joinpath("corpora")


@functools.lru_cache(maxsize=1)
def _manifest() -> dict[str, Any]:
    path = _folder().joinpath("manifest.json")
    if not path.is_file():
        raise FileNotFoundError(
            "the package's corpora/manifest.json is missing: the installation is incomplete. Reinstall "
            "gradiend_peft, or rebuild the corpora with scripts/build_corpora.py."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def available_corpora() -> dict[str, list[str]]:
    """Every corpus name, mapped to the parts it is made of (a part maps to itself).

    Examples:
        >>> available_corpora()["english"]
        ['wordnet', 'web']
    """
    manifest = _manifest()
    names = {name: list(parts) for name, parts in manifest["collections"].items()}
    names.update({part: [part] for part in manifest["corpora"]})
    return names


def _parts(name: str) -> list[str]:
    corpora = available_corpora()
    if name not in corpora:
        raise ValueError(f"unknown corpus {name!r}; the corpora are {sorted(corpora)}.")
    return corpora[name]


def corpus_info(name: str) -> dict[str, Any]:
    """What a corpus holds: per part its file, language, source, licence, sentence and word counts.

    Returns:
        ``{"parts": {part: {...}}, "sentences": total, "words": total}``.
    """
    parts = {part: dict(_manifest()["corpora"][part]) for part in _parts(name)}
    return {
        "parts": parts,
        "sentences": sum(p["sentences"] for p in parts.values()),
        "words": sum(p["words"] for p in parts.values()),
    }


@functools.lru_cache(maxsize=8)
def _read_part(part: str) -> tuple[str, ...]:
    path = _folder().joinpath(_manifest()["corpora"][part]["file"])
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as handle:
        return tuple(line.rstrip("\n") for line in handle if line.strip())


def load_corpus(name: str) -> list[str]:
    """The sentences of a shipped corpus, one string per sentence.

    Args:
        name: ``"english"``, ``"german"``, or a single part (``"wordnet"``, ``"web"``, ``"fortunes-de"``);
            see :func:`available_corpora`.

    Returns:
        A new list of sentences (parts in the order listed, each in its source order).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).

    Examples:
        >>> sentences = load_corpus("english")
        >>> pairs = mine_pairs(sentences, {"SG": ["is"], "PL": ["are"]}, min_context_words=5)
    """
    sentences: list[str] = []
    for part in _parts(name):
        sentences.extend(_read_part(part))
    return sentences
