"""Saving and loading the adapters of a feature's pairs of classes as one folder with an index.

A feature of three or more classes is learned as one adapter per pair of classes, all in one `peft.PeftModel`
(`gradiend_peft.training.train_pairs`). `save_pair_adapters` writes them as peft does, every adapter into
``<folder>/<adapter name>/`` (``adapter_config.json``, ``adapter_model.safetensors``, the GRADIEND model card and,
after training, ``gradiend_training_summary.json``), plus the index ``<folder>/gradiend_pairs.json``::

    {"format": "gradiend-pairs", "version": 1,
     "feature": {"name": null, "classes": {"A": ["..."], "B": ["..."], "C": ["..."]}},
     "pairs": [{"classes": ["A", "B"], "adapter": "A-vs-B", "folder": "A-vs-B",
                "class_signs": {"A": 1.0, "B": -1.0}}, ...]}

All files, the sub-folders' included, are staged and committed as one set under one journal in ``<folder>``
(`gradiend_peft.atomic.commit_staging` with ``subfolders=True``): a crash leaves the old set or the new one, or a
journal that loads refuse until the next `save_pair_adapters` (or the owner's `finish_interrupted_pair_save`)
finishes the commit.

`load_pair_adapters` is read-only. Holding the folder's shared lock (a save commits under the exclusive one), it
refuses a folder holding a journal, reads the index strictly (`read_pair_index`: a JSON object of exactly this form,
no key twice; every folder a plain name, letters, digits, ``_`` and ``-``, naming a real sub-folder, not a symbolic
link), checks every chosen pair's config and weight headers (`gradiend_peft.tuner.persistence.check_adapter_files`)
and that its classes and signs are the index's, and only then loads the adapters onto one base model with
`gradiend_peft.load_gradiend_model` and `gradiend_peft.loading.load_gradiend_adapter`, whose checks every file
passes (JSON and safetensors only, a pair's files read under its folder's shared lock, every tensor checked before it
is loaded). A refusal leaves the base model as it was.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .atomic import (
    UntrustedAdapterError,
    abort_staging,
    atomic_write_json,
    begin_staging,
    commit_staging,
    folder_lock,
    open_regular_file,
    recover_directory,
    refuse_interrupted_commit,
)
from .data.class_pairs import pair_label, pairs_of_classes
from .data.feature import Feature
from .loading import load_gradiend_adapter, load_gradiend_model
from .saving import finish_interrupted_save, superseded_weight_files, write_model_card
from .tuner.config import GradiendConfig
from .tuner.constants import ADAPTER_FILES, CARD_NAME, CONFIG_NAME, TRAINING_SUMMARY_NAME, WEIGHT_FILES, WEIGHTS_NAME
from .tuner.persistence import AdapterFolder, check_adapter_files

__all__ = ["PAIR_INDEX_NAME", "PairEntry", "PairIndex", "finish_interrupted_pair_save", "is_pair_folder",
           "load_pair_adapters", "read_pair_index", "save_pair_adapters"]

PAIR_INDEX_NAME = "gradiend_pairs.json"
"""The index file of a folder of pair adapters."""

INDEX_FORMAT = "gradiend-pairs"
INDEX_VERSION = 1
MAX_PAIR_INDEX_BYTES = 4 * 1024 * 1024
MAX_NAME_CHARS = 200
_FOLDER = rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}"  # a pair's folder: what `_plain_name` accepts
_PAIR_FILES = re.compile(rf"{re.escape(PAIR_INDEX_NAME)}|{_FOLDER}/(?:{ADAPTER_FILES})").fullmatch
"""The names a pair folder's commit journal may move: the index, and each pair's adapter files."""
_PAIR_WEIGHT_FILES = re.compile(rf"{_FOLDER}/(?:{WEIGHT_FILES})").fullmatch
"""The names it may delete: a pair's weight files that the new set replaces under other names (the shards)."""
_LOAD_FIX = ("Save the pair adapters into the folder again (save_pair_adapters first checks the journal, then finishes "
             "the interrupted save), or, if the folder is yours, finish it with "
             "gradiend_peft.pair_adapters.finish_interrupted_pair_save(folder).")


def _plain_name(value: Any) -> bool:
    """A name that is one path component of our own making: letters, digits, ``_`` and ``-`` (so no ``.``, no ``..``,
    no separator, never absolute)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS
            and all(c.isascii() and (c.isalnum() or c in "_-") for c in value))


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise UntrustedAdapterError(message)


@dataclass(frozen=True)
class PairEntry:
    """One pair's adapter in a folder of pair adapters.

    Attributes:
        pair (`tuple[str, str]`): The pair; its adapter was trained with ``pair[0]`` labelled +1.
        adapter_name (`str`): The adapter's name once loaded.
        folder (`str`): Its sub-folder (a plain name).
        class_signs (`dict[str, float]`): The sign each of the two classes' gradients encodes to.
    """

    pair: tuple[str, str]
    adapter_name: str
    folder: str
    class_signs: dict[str, float]


@dataclass(frozen=True)
class PairIndex:
    """The index of a folder of pair adapters (see the module docstring for its JSON form).

    Attributes:
        classes (`dict[str, tuple[str, ...]]`): The feature's classes and their words.
        name (`str`, *optional*): The feature's name.
        entries (`tuple[PairEntry, ...]`): One entry per pair.
    """

    classes: dict[str, tuple[str, ...]]
    name: Optional[str]
    entries: tuple[PairEntry, ...]

    @property
    def adapters(self) -> dict[tuple[str, str], str]:
        """Pair -> adapter name."""
        return {entry.pair: entry.adapter_name for entry in self.entries}

    def feature(self, pair: Optional[Sequence[str]] = None) -> Feature:
        """The feature, with ``pair`` (default: the first entry's) as its labelled pair."""
        return Feature(classes=self.classes, pair=tuple(pair or self.entries[0].pair), name=self.name)

    def to_dict(self) -> dict[str, Any]:
        """The index file's JSON payload."""
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "feature": {"name": self.name, "classes": {k: list(v) for k, v in self.classes.items()}},
            "pairs": [{"classes": list(e.pair), "adapter": e.adapter_name, "folder": e.folder,
                       "class_signs": dict(e.class_signs)} for e in self.entries],
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "the pair index") -> "PairIndex":
        """Checks an untrusted index payload and builds the index.

        Raises:
            `UntrustedAdapterError`: naming the offending key and what was expected.
        """
        _expect(isinstance(raw, dict) and set(raw) == {"format", "version", "feature", "pairs"},
                f"{where} must be a JSON object with exactly the keys format, version, feature and pairs.")
        _expect(raw["format"] == INDEX_FORMAT, f"{where} is not a GRADIEND pair index (format={raw['format']!r}).")
        version = raw["version"]
        _expect(isinstance(version, int) and not isinstance(version, bool) and version == INDEX_VERSION,
                f"{where} has version {version!r}; this gradiend_peft reads version {INDEX_VERSION}.")
        feature = raw["feature"]
        _expect(isinstance(feature, dict) and set(feature) == {"name", "classes"},
                f"{where}: 'feature' must be an object with exactly 'name' and 'classes'.")
        name = feature["name"]
        _expect(name is None or (isinstance(name, str) and len(name) <= MAX_NAME_CHARS),
                f"{where}: the feature's name must be a short string or null.")
        classes = feature["classes"]
        _expect(isinstance(classes, dict) and len(classes) >= 2 and all(
            isinstance(words, list) and words and all(isinstance(w, str) for w in words) for words in classes.values()),
            f"{where}: 'classes' must map at least two class names to non-empty lists of words.")
        pairs = raw["pairs"]
        _expect(isinstance(pairs, list) and 0 < len(pairs) <= len(classes) * (len(classes) - 1) // 2,
                f"{where}: 'pairs' must be a non-empty list of at most one entry per pair of classes.")
        entries = [cls._entry(item, classes, f"{where}: pairs[{i}]") for i, item in enumerate(pairs)]
        try:
            pairs_of_classes(Feature(classes=classes, pair=entries[0].pair), [e.pair for e in entries])
        except (ValueError, TypeError) as err:
            raise UntrustedAdapterError(f"{where}: {err}") from err
        for attribute in ("adapter_name", "folder"):
            values = [getattr(e, attribute).lower() for e in entries]
            _expect(len(set(values)) == len(values), f"{where} names one {attribute.replace('_', ' ')} twice.")
        return cls(classes={k: tuple(v) for k, v in classes.items()}, name=name, entries=tuple(entries))

    @staticmethod
    def _entry(item: Any, classes: dict, where: str) -> PairEntry:
        _expect(isinstance(item, dict) and set(item) == {"classes", "adapter", "folder", "class_signs"},
                f"{where} must be an object with exactly the keys classes, adapter, folder and class_signs.")
        pair = item["classes"]
        _expect(isinstance(pair, list) and len(pair) == 2 and all(isinstance(c, str) and c in classes for c in pair)
                and pair[0] != pair[1],
                f"{where}: 'classes' must be two different classes of the feature, got {pair!r}.")
        for key in ("adapter", "folder"):
            _expect(_plain_name(item[key]), f"{where}: {key} {item[key]!r} is not a plain name (letters, digits, '_' "
                    "and '-' only: no '.', '..', path separator or absolute path).")
        signs = item["class_signs"]
        _expect(isinstance(signs, dict) and set(signs) == set(pair)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v in (1, -1)
                        for v in signs.values())
                and signs[pair[0]] == -signs[pair[1]],
                f"{where}: 'class_signs' must give the pair's two classes +1 and -1, got {signs!r}.")
        return PairEntry(pair=(pair[0], pair[1]), adapter_name=item["adapter"], folder=item["folder"],
                         class_signs={k: float(v) for k, v in signs.items()})


def is_pair_folder(directory: str) -> bool:
    """Whether ``directory`` holds a pair index (``gradiend_pairs.json``)."""
    return os.path.lexists(os.path.join(directory, PAIR_INDEX_NAME))


def _regular_file(path: str, what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise UntrustedAdapterError(f"{what} {path!r} does not exist.") from None
    _expect(stat.S_ISREG(mode), f"{what} {path!r} is not a regular file (a symbolic link or something else); "
            "gradiend_peft reads only files inside the adapter folder.")


def read_pair_index(directory: str) -> PairIndex:
    """Reads and checks ``<directory>/gradiend_pairs.json`` (see the module docstring), and that every folder it
    names is a real sub-folder of ``directory`` (not a link). The adapter files inside are checked when they are
    loaded (`load_pair_adapters`).

    Raises:
        `UntrustedAdapterError`: naming the file, the key or the folder, and what was expected.
        `FileNotFoundError`: when ``directory`` has no index.
    """
    path = os.path.join(directory, PAIR_INDEX_NAME)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{directory!r} holds no {PAIR_INDEX_NAME}: it is not a folder of pair adapters "
                                "(save_pair_adapters writes one; a single adapter loads with load_gradiend_model).")
    _regular_file(path, "The pair index")
    with os.fdopen(open_regular_file(path), "rb") as handle:
        data = handle.read(MAX_PAIR_INDEX_BYTES + 1)
    _expect(len(data) <= MAX_PAIR_INDEX_BYTES, f"{path} is larger than {MAX_PAIR_INDEX_BYTES} bytes.")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        _expect(len(set(keys)) == len(keys), f"{path} gives a key twice in one object.")
        return dict(pairs)

    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates,
                         parse_constant=lambda c: _expect(False, f"{path} holds {c}, which is not JSON."))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UntrustedAdapterError(f"{path} is not valid JSON: {err}") from err
    index = PairIndex.from_dict(raw, path)
    root = os.path.realpath(directory)
    for entry in index.entries:
        folder = os.path.join(directory, entry.folder)
        _expect(os.path.lexists(folder),
                f"{path} names the folder {entry.folder!r}, which {directory!r} does not hold.")
        _expect(not os.path.islink(folder) and os.path.isdir(folder)
                and os.path.dirname(os.path.realpath(folder)) == root,
                f"{folder!r} (pair {pair_label(entry.pair)}) is not a folder inside {directory!r} (a symbolic link?); "
                "gradiend_peft reads only real sub-folders.")
    return index


def save_pair_adapters(model: Any, directory: str, feature: Feature, adapters: Mapping[Sequence[str], str],
                       training_summaries: Optional[Mapping[Sequence[str], Mapping[str, Any]]] = None) -> str:
    """Saves the pairs' adapters of ``model`` into ``directory`` with the index, as one commit (see the module
    docstring); returns ``directory``.

    An interrupted save into ``directory`` is finished first, and so is one into a pair's sub-folder (a
    `gradiend_peft.save_adapter` there), each after the strict check of its journal; a crafted journal is refused and
    nothing is written.

    Args:
        model (`peft.PeftModel`): The model holding the adapters (``train_pairs(...).model``).
        directory (`str`): The folder. Files of the folder that the save does not write stay as they are, except a
            pair's previous sharded weights (the index and the shards a valid GRADIEND index names in its sub-folder),
            which the single-file weights replace in the same commit.
        feature (`Feature`): The feature whose classes and words the index records.
        adapters (`Mapping[tuple[str, str], str]`): Pair -> adapter name (``train_pairs(...).adapters``).
        training_summaries (`Mapping[tuple[str, str], dict]`, *optional*): Pair -> ``training_summary``, saved
            beside each adapter and in its model card.

    Raises:
        `ValueError`: for a pair that is not one of ``feature``'s, an adapter the model lacks, an adapter named
            ``default`` or with other characters than letters, digits, ``_`` and ``-``, an adapter whose classes are
            not its pair's, or a ``directory`` that holds a single adapter (``adapter_config.json``) of its own.
        `IsADirectoryError` / `FileExistsError`: if a file or a pair's folder the save writes is taken by something
            else (a folder, a link, a file): nothing is written.
        `UntrustedAdapterError`: for an interrupted commit whose journal fails the checks (nothing is written).
    """
    pairs = pairs_of_classes(feature, [tuple(pair) for pair in adapters])
    names = {tuple(pair): name for pair, name in adapters.items()}
    summaries = {tuple(pair): summary for pair, summary in (training_summaries or {}).items()}
    entries = []
    for pair in pairs:
        name = names[pair]
        if not _plain_name(name) or name == "default":
            raise ValueError(f"Adapter {name!r} (pair {pair_label(pair)}) cannot be saved as a pair adapter: name it "
                             "with letters, digits, '_' and '-' only, not 'default' (pair_adapter_names does).")
        config = getattr(model, "peft_config", {}).get(name)
        if not isinstance(config, GradiendConfig):
            raise ValueError(f"The model holds no GRADIEND adapter {name!r} (pair {pair_label(pair)}).")
        signs = config.class_signs or {}
        if list(config.feature_classes or []) != list(pair) or set(signs) != set(pair):
            raise ValueError(f"Adapter {name!r} has feature_classes {config.feature_classes} and class_signs {signs}, "
                             f"not those of pair {pair_label(pair)}.")
        entries.append(PairEntry(pair=pair, adapter_name=name, folder=name,
                                 class_signs={k: float(v) for k, v in signs.items()}))
    if os.path.lexists(os.path.join(directory, CONFIG_NAME)):
        raise ValueError(f"{directory!r} holds a single adapter ({CONFIG_NAME}); save the pair adapters into a "
                         "folder of their own.")
    index = PairIndex(classes={k: tuple(v) for k, v in feature.classes.items()}, name=feature.name,
                      entries=tuple(entries))
    files = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
    targets = [PAIR_INDEX_NAME] + [f"{entry.folder}/{name}" for entry in entries
                                   for name in files + ([TRAINING_SUMMARY_NAME] if entry.pair in summaries else [])]
    staging = begin_staging(directory, targets)  # refuses a pair's folder that is a link or a file
    try:
        for entry in entries:
            if os.path.isdir(os.path.join(directory, entry.folder)):
                finish_interrupted_save(os.path.join(directory, entry.folder))
        model.save_pretrained(staging, selected_adapters=[e.adapter_name for e in entries])
        readme = os.path.join(staging, CARD_NAME)
        if os.path.lexists(readme):
            os.unlink(readme)  # peft's generic card for the whole model: each pair's folder gets its own card
        for entry in entries:
            folder = os.path.join(staging, entry.folder)
            summary = summaries.get(entry.pair)
            write_model_card(model, folder, adapter_name=entry.adapter_name,
                             training_summary=dict(summary) if summary is not None else None)
            if summary is not None:
                atomic_write_json(os.path.join(folder, TRAINING_SUMMARY_NAME), dict(summary))
        atomic_write_json(os.path.join(staging, PAIR_INDEX_NAME), index.to_dict())
    except BaseException:
        abort_staging(staging)
        raise
    commit_staging(directory, staging, _PAIR_FILES, _PAIR_WEIGHT_FILES, _superseded,
                   first=[f"{entry.folder}/{CONFIG_NAME}" for entry in entries], subfolders=True)
    return directory


def _superseded(directory: str, staged: list[str]) -> list[str]:
    """`gradiend_peft.saving.superseded_weight_files` of every pair's sub-folder, as ``sub/file`` names."""
    by_folder: dict[str, list[str]] = {}
    for name in staged:
        folder, _, file = name.rpartition("/")
        if folder:
            by_folder.setdefault(folder, []).append(file)
    return [f"{folder}/{file}" for folder, files in by_folder.items()
            for file in superseded_weight_files(os.path.join(directory, folder), files)]


def _check_classes(directory: str, entry: PairEntry, classes: Any, signs: Any) -> None:
    """A pair's adapter must have the classes and signs its index entry gives (else the folders are mixed up)."""
    _expect(isinstance(classes, list) and classes == list(entry.pair) and signs == entry.class_signs,
            f"{os.path.join(directory, entry.folder)!r} holds an adapter of classes {classes} with signs {signs}, but "
            f"the index lists pair {pair_label(entry.pair)} with signs {entry.class_signs}: a mixed-up folder.")


def finish_interrupted_pair_save(directory: str) -> None:
    """Completes the `save_pair_adapters` into ``directory`` that a crash interrupted (loads refuse a folder holding
    its journal, and do not change it): for the folder's owner. The next `save_pair_adapters` into the folder does
    the same on its own.

    Raises:
        `UntrustedAdapterError`: if the journal names anything but the index and the pairs' adapter files, or its
            paths are links (see `gradiend_peft.atomic.commit_staging`); nothing is written.
    """
    recover_directory(directory, _PAIR_FILES, _PAIR_WEIGHT_FILES)


def load_pair_adapters(base_model: Any, directory: str, *, pairs: Optional[Sequence[Sequence[str]]] = None,
                       is_trainable: bool = False) -> tuple[Any, PairIndex]:
    """Loads the pairs' adapters of a folder (`save_pair_adapters`) onto one base model; writes nothing.

    Args:
        base_model (`nn.Module`): The transformers model the adapters were trained on.
        directory (`str`): The local folder with ``gradiend_pairs.json``.
        pairs (`Sequence[tuple[str, str]]`, *optional*): Only these pairs (as the index writes them); default all.
        is_trainable (`bool`): Load the adapters trainable.

    Returns:
        `tuple[peft.PeftModel, PairIndex]`: the model, with every loaded pair's adapter under the index's adapter
        name (the first one active), and the index (restricted to the loaded pairs).

    Raises:
        `UntrustedAdapterError`: for a folder holding the journal of an interrupted save (it is not finished: see
            `finish_interrupted_pair_save`), a malformed index or folder (see `read_pair_index`), adapter files that
            `load_gradiend_model` refuses, or an adapter whose classes or signs are not the index's. ``base_model``
            is then left as it was (the adapters loaded before the refusal are unloaded again).
        `ValueError`: for ``pairs`` the index does not hold.
        `FileNotFoundError`: when ``directory`` is not a folder of pair adapters.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a folder: no pair adapters to load (save_pair_adapters writes "
                                "them).")
    with folder_lock(directory, shared=True):  # a save commits under the exclusive lock: one save's files
        refuse_interrupted_commit(directory, fix=_LOAD_FIX)
        index = read_pair_index(directory)
        entries = list(index.entries)
        if pairs is not None:
            wanted = [tuple(pair) for pair in pairs]
            known = {entry.pair: entry for entry in entries}
            missing = [pair_label(pair) for pair in wanted if pair not in known]
            if missing or not wanted:
                raise ValueError(f"{directory!r} holds the pairs {[pair_label(e.pair) for e in entries]}; "
                                 f"{missing or 'none'} asked for.")
            entries = [known[pair] for pair in wanted]
        for entry in entries:  # every pair's files and classes before the base model is touched
            raw = check_adapter_files(AdapterFolder(os.path.join(directory, entry.folder), True))
            _check_classes(directory, entry, raw.get("feature_classes"), raw.get("class_signs"))
        model = None
        try:
            for entry in entries:
                folder = os.path.join(directory, entry.folder)
                if model is None:
                    model = load_gradiend_model(base_model, folder, adapter_name=entry.adapter_name,
                                                is_trainable=is_trainable)
                else:
                    load_gradiend_adapter(model, folder, entry.adapter_name, is_trainable=is_trainable)
                config = model.peft_config[entry.adapter_name]  # the config loaded, as read under its folder's lock
                _check_classes(directory, entry, config.feature_classes, config.class_signs)
        except BaseException:
            if model is not None:
                model.unload()  # base_model's modules as they were
            raise
    model.set_adapter(entries[0].adapter_name)
    return model, PairIndex(classes=index.classes, name=index.name, entries=tuple(entries))
