"""Row groups for GRADIEND: each batch holds rows of a single feature class.

One GRADIEND sample is the batch-mean gradient of a group of rows of the same class (the reference implementation
batches by class). `ClassGroupedBatchSampler` makes those groups: it shuffles each class's rows (seeded by
``seed`` and the epoch, so that an interrupted run resumes on the same order), cuts them into groups of
``rows_per_gradient`` rows and interleaves the classes round-robin, ``A B A B ...``.

Evaluation loaders carry each row's dataset index (`IndexedCollator`), so that the encodings gathered from several
processes, which repeat rows to even out the processes, are matched to their rows once each (`each_row_once`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .arguments import CLASS_BALANCES

ROW_INDEX = "gradiend_row_index"
"""The column the evaluation loaders add, so that predictions can be matched to their rows."""


class IndexedCollator:
    """A collator's batch plus a ``gradiend_row_index`` tensor (the rows' dataset indices, from `ROW_INDEX`)."""

    def __init__(self, collator: Callable[[list], dict]) -> None:
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        indices = [row[ROW_INDEX] for row in rows]
        batch = self.collator([{k: v for k, v in row.items() if k != ROW_INDEX} for row in rows])
        batch[ROW_INDEX] = torch.tensor(indices, dtype=torch.long)
        return batch


def each_row_once(indices: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    """The gathered ``(indices, predictions)`` with every row once (its first occurrence), in index order."""
    indices = np.asarray(indices).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(len(indices), -1)
    _, first = np.unique(indices, return_index=True)  # sorted by index
    return indices[first], predictions[first]


def row_classes(dataset) -> list[Hashable]:
    """The class key of every row: ``factual_class`` where the dataset has it, else ``label``.

    Raises:
        ValueError: when the dataset has neither column.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(
            f"GRADIEND training takes a datasets.Dataset of rows (text, factual, alternative, factual_class, label), "
            f"got {type(dataset).__name__}."
        )
    for column in ("factual_class", "label"):
        if column in columns:
            return list(dataset[column])
    raise ValueError(
        f"The dataset has no 'factual_class' or 'label' column (columns: {columns}); GRADIEND groups rows by class. "
        "Use the rows of gradiend_peft.data.mine_pairs, or add a 'label' column (+1 / -1)."
    )


class ClassGroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, each of rows of a single class, interleaved round-robin over classes.

    Args:
        classes (`Sequence[Hashable]`): The class key of every row (see `row_classes`).
        rows_per_gradient (`int`): Rows per group (the last group of a class may be smaller unless ``drop_last``).
        shuffle (`bool`): Shuffle each class's rows every epoch (``False``: dataset order, for evaluation).
        seed (`int`): Seed of the shuffling; epoch ``e`` uses its own deterministic permutation.
        balance (`str`): ``oversample``, ``undersample`` or ``none`` (see `GradiendTrainingArguments`).
        drop_last (`bool`): Drop each class's last incomplete group.

    ``batch_size`` is ``None`` on purpose: accelerate then shards whole groups over processes instead of padding
    them with rows of other groups.
    """

    batch_size = None

    def __init__(self, classes: Sequence[Hashable], rows_per_gradient: int, *, shuffle: bool = True, seed: int = 0,
                 balance: str = "oversample", drop_last: bool = False) -> None:
        if rows_per_gradient < 1:
            raise ValueError(f"rows_per_gradient must be positive, got {rows_per_gradient}.")
        if balance not in CLASS_BALANCES:
            raise ValueError(f"balance must be one of {CLASS_BALANCES}, got {balance!r}.")
        self.rows_per_gradient = int(rows_per_gradient)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.balance = balance
        self.drop_last = drop_last
        self.epoch = 0
        by_class: dict[Hashable, list[int]] = {}
        for index, key in enumerate(classes):
            by_class.setdefault(key, []).append(index)  # classes in order of first appearance
        if not by_class:
            raise ValueError("Cannot build row groups from an empty dataset.")
        self.class_rows = by_class
        counts = [self._group_count(len(rows)) for rows in by_class.values()]
        if min(counts) == 0:
            small = {k: len(v) for k, v in by_class.items() if self._group_count(len(v)) == 0}
            raise ValueError(
                f"Classes {small} have fewer rows than rows_per_gradient={rows_per_gradient} and drop_last=True, so "
                "they give no row group. Lower rows_per_gradient or set dataloader_drop_last=False."
            )
        if balance == "oversample":
            self._groups_per_class = [max(counts)] * len(counts)
        elif balance == "undersample":
            self._groups_per_class = [min(counts)] * len(counts)
        else:
            self._groups_per_class = counts

    def _group_count(self, rows: int) -> int:
        return rows // self.rows_per_gradient if self.drop_last else -(-rows // self.rows_per_gradient)

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of epoch ``epoch`` (called by the trainer before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return sum(self._groups_per_class)

    def groups(self, epoch: int | None = None) -> list[list[int]]:
        """The row groups of ``epoch`` (default: the current one), in the order they are yielded."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        per_class = []
        for rows, wanted in zip(self.class_rows.values(), self._groups_per_class):
            per_class.append(self._class_groups(rows, wanted, generator))
        ordered = []
        for position in range(max(len(groups) for groups in per_class)):
            for groups in per_class:
                if position < len(groups):
                    ordered.append(groups[position])
        return ordered

    def _class_groups(self, rows: list[int], wanted: int, generator: torch.Generator) -> list[list[int]]:
        size = self.rows_per_gradient

        def order() -> list[int]:
            if not self.shuffle:
                return list(rows)
            return [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]

        own = order()
        groups = [own[i : i + size] for i in range(0, len(own), size)]
        if self.drop_last:
            groups = [g for g in groups if len(g) == size]
        if len(groups) >= wanted:
            return groups[:wanted]
        # oversampling: keep drawing fresh permutations of the class, in full groups
        pool: list[int] = []
        while len(groups) < wanted:
            while len(pool) < size:
                pool.extend(order())
            groups.append(pool[:size])
            pool = pool[size:]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.groups()
