"""The LightningDataModule base of every family: typed items, sample ids and one way to build loaders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Protocol

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.data.samples import COLLATE, IndexedDataset, SampleKind

# Held-out synthetic splits draw from seeds far from the training range (train seeds start at 0).
VAL_SEED = 1_000_000
TEST_SEED = 2_000_000


class EpochDataset(Protocol):
    """A dataset whose augmentation draws depend on the epoch."""

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class EpochSampler(Sampler[int]):
    """Seeded shuffling that re-seeds the dataset's augmentation each epoch (Lightning calls set_epoch)."""

    def __init__(self, dataset: EpochDataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order and augmentation draws of `epoch`."""
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


class EmptySplitError(ValueError):
    """An evaluation split without a single sample (e.g. a ground-truth file with no annotations)."""


class ZooDataModule(LightningDataModule):
    """Loaders built one way for every family.

    `sample_kind` names the typed item the family's datasets return (zoo.data.samples). Evaluation loaders
    wrap their dataset so every item carries `sample_id` (its index in the split) and is checked against the
    kind; under DDP Lightning shards them with its DistributedSampler, whose repeats the evaluators drop by
    sample id.
    """

    sample_kind: ClassVar[SampleKind] = "image"

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        num_workers: int = 0,
        *,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        persistent_workers: bool = False,
    ) -> DataLoader:
        """A DataLoader over `dataset` with the collate function of the family's sample kind."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            persistent_workers=persistent_workers and num_workers > 0,
            collate_fn=COLLATE[self.sample_kind],
        )

    def eval_loader(
        self, dataset: Dataset, batch_size: int, num_workers: int = 0, name: str = "eval"
    ) -> DataLoader:
        """An evaluation loader: items in split order, each with its `sample_id` (an empty split is an error).
        """
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise EmptySplitError(f"{name}: the evaluation split has no samples (empty ground truth?)")
        return self.loader(IndexedDataset(dataset, self.sample_kind, name), batch_size, num_workers)
