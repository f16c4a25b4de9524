"""First names by gender: the US Census 1990 lists (via the MIT-licensed PyPI package ``names``), shipped in
``gradiend_peft/corpora/`` (see its README for the provenance)."""

from __future__ import annotations

import gzip
import json

from ...data.corpora import _folder, _manifest

__all__ = ["load_names"]


def load_names(kind: str, *, top: int | None = None) -> list[str]:
    """US first names (1990 census), most frequent first.

    Args:
        kind: ``"female"`` or ``"male"``. The lists overlap for some names (e.g. "James" is rare but
            present among female names); filter with the other list where that matters.
        top: keep only the ``top`` most frequent names.

    Returns:
        Names capitalised, e.g. ``["Mary", "Patricia", ...]``.
    """
    info = _manifest().get("names")
    if info is None:
        raise FileNotFoundError("this installation ships no name lists (corpora/names.en.json.gz).")
    if kind not in info["kinds"]:
        raise ValueError(f"unknown name list {kind!r}; choose one of {sorted(info['kinds'])}.")
    with _folder().joinpath(info["file"]).open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as handle:
        rows = json.load(handle)[kind]
    names = [name for name, _ in rows]
    return names if top is None else names[:top]
