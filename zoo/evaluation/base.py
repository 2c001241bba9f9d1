"""The evaluator protocol: `update` per batch, `compute` over the whole split on every rank, `reset`.

Every evaluator keeps its state per *sample*
(keyed by the dataset index that the datamodule puts into each batch item as `sample_id`), so that a
distributed run can be merged exactly: `compute()` first gathers the state of all ranks with
`torch.distributed.all_gather_object` (mmengine's `collect_results` does the same for its list states), drops
repeated samples (a padding `DistributedSampler` hands the first samples of the split to a second rank again),
orders what is left by sample id and only then computes the metrics. One process and N processes therefore see
the same samples in the same order and give the same numbers.

Why not torchmetrics' `Metric`: its states are tensors reduced by sum/cat, which counts padding duplicates
twice and cannot carry COCO instances or PoseTrack frames; gathering picklable per-sample records is one call
into torch.distributed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from typing import Any

import torch.distributed as dist


def world_size() -> int:
    """Number of processes of the default process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(value: Any) -> list[Any]:
    """`value` of every rank, in rank order (a one-element list without a process group)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class Evaluator(ABC):
    """A metric over a whole split: `update` per batch, `compute` (gathered over all ranks first), `reset`."""

    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add the outputs of one batch."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metrics over the samples of all ranks (every rank returns the same dict)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every sample seen so far."""


class RecordEvaluator(Evaluator):
    """An evaluator whose state is one record per sample.

    Subclasses store records with `_add(sample_id, record)` in `update` and turn the merged, ordered records
    into metrics in `_compute`. `compute()` gathers, de-duplicates and orders them first.
    """

    def __init__(self) -> None:
        self._records: dict[Hashable, Any] = {}

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._records = {}

    def __len__(self) -> int:
        """Number of samples held on this rank."""
        return len(self._records)

    def _add(self, sample_id: Hashable, record: Any) -> None:
        # The first record of a sample wins: a sample seen twice (padding) is the same sample, not new
        # evidence.
        self._records.setdefault(sample_id, record)

    def merged_records(self) -> list[tuple[Hashable, Any]]:
        """(sample id, record) of every rank, each sample once (first rank wins), sorted by sample id."""
        merged: dict[Hashable, Any] = {}
        for records in gather_objects(self._records):
            for sample_id, record in records.items():
                merged.setdefault(sample_id, record)
        return sorted(merged.items(), key=lambda item: _sort_key(item[0]))

    def compute(self) -> dict[str, float]:
        """Metrics over the merged records of all ranks."""
        return self._compute([record for _, record in self.merged_records()])

    @abstractmethod
    def _compute(self, records: list[Any]) -> dict[str, float]:
        """Metrics of the merged records, in sample-id order."""


def _sort_key(sample_id: Hashable) -> tuple:
    # Sample ids are ints or tuples of ints/strings; sorting them as tuples keeps mixed ids comparable.
    return tuple(sample_id) if isinstance(sample_id, tuple) else (sample_id,)


def sample_ids(batch: dict[str, Any], size: int) -> Iterable[Hashable]:
    """The `sample_id` column of a batch as Python values (raises a clear error when a datamodule omits it).
    """
    if "sample_id" not in batch:
        raise KeyError(
            "batch has no 'sample_id': evaluators key their state by the dataset index so that distributed "
            "evaluation can drop padding duplicates; add it to the dataset's items"
        )
    values = batch["sample_id"]
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != size:
        raise ValueError(f"batch has {len(values)} sample ids for {size} items")
    return values
