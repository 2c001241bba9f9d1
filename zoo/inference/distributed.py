"""Scale-out annotation through Lightning: `Trainer.predict` over fixed image batches, one shard of them per
rank.

Every rank runs whole batches of the Annotator's fixed batch list
(so each image meets the same batch-mates as in a single process and its floats are bit-identical) and writes
its images' outputs and records atomically; once all ranks are done, rank 0 merges the records into the same
files a single process writes. Works with any Lightning strategy that launches processes
(ddp on CPU/gloo or GPUs/nccl, across nodes; ddp_spawn).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from zoo.inference.annotate import AnnotationError, AnnotationSummary, Annotator, ImageItem, LoadedBatch


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, rank + 2 world, ...: every index exactly once over all ranks, no padding.

    torch's DistributedSampler repeats indices to give every rank the same count; here a repeat would annotate
    an image twice, so ranks may get one batch fewer (prediction needs no collective step per batch).
    """

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.rank) / self.num_replicas))


def _place(predictor: Any, device: torch.device) -> None:
    """Point a predictor that remembers its device (PosePredictor) at the rank's device Lightning moved it to.
    """
    if "device" in vars(predictor):
        predictor.device = device


class AnnotationModule(pl.LightningModule):
    """A LightningModule around an Annotator: setup plans the batches, predict_step annotates one batch."""

    def __init__(self, annotator: Annotator, items: Sequence[ImageItem]) -> None:
        super().__init__()
        self.annotator = annotator
        self.items = list(items)
        # Registered as submodules so that Lightning moves the predictors' weights to each rank's device.
        self.models = nn.ModuleList([p.model for p in annotator.predictors.values()])
        self.todo: list[list[ImageItem]] = []

    def setup(self, stage: str) -> None:
        """Rank 0 checks the resume state and lists the batches still to do; every rank receives that list."""
        todo, error = None, None
        if self.trainer.is_global_zero:
            try:
                todo = self.annotator.prepare(self.items)
            except AnnotationError as exc:  # every rank must stop, not wait for a list that never comes
                error = str(exc)
        # One list for all ranks: a rank listing later could see another rank's fresh records and shard
        # differently.
        self.todo, error = self.trainer.strategy.broadcast((todo, error), src=0)
        if error is not None:
            raise AnnotationError(error)

    def predict_dataloader(self) -> DataLoader:
        """This rank's shard of the pending batches."""
        sampler = ShardSampler(len(self.todo), self.trainer.world_size, self.trainer.global_rank)
        if len(sampler) == 0 and self.todo:
            # Lightning refuses a rank without batches while others have some; an empty batch is a no-op.
            return self.annotator.dataloader([[]])
        return self.annotator.dataloader(self.todo, sampler=sampler)

    def on_predict_start(self) -> None:
        """Predictors that remember their device follow the module's."""
        for predictor in self.annotator.predictors.values():
            _place(predictor, self.device)

    def transfer_batch_to_device(
        self, batch: LoadedBatch, device: torch.device, dataloader_idx: int
    ) -> LoadedBatch:
        """Batches hold numpy images; the predictors move their inputs themselves."""
        return batch

    def predict_step(self, batch: LoadedBatch, batch_idx: int) -> int:
        """Annotate one fixed batch (outputs and records written by this rank); returns the predictions run.
        """
        return self.annotator.process_batch(batch)


def annotate_distributed(
    annotator: Annotator,
    inputs: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "ddp",
    **trainer_kwargs: Any,
) -> AnnotationSummary | None:
    """Annotate with `Trainer.predict` on several devices/nodes; the summary on rank 0 (None on other ranks).

    With strategy="ddp" Lightning re-runs the calling script for every other local rank, so call this from a
    script (e.g. tools/annotate.py), not from an interactive session; "ddp_spawn" works anywhere but pickles
    the predictors to the workers.
    """
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=annotator.progress,
        use_distributed_sampler=False,
        **trainer_kwargs,
    )
    items = annotator.list_inputs(inputs, image_root)
    module = AnnotationModule(annotator, items)
    trainer.predict(module, return_predictions=False)
    # Spawned workers took their counts with them; without a launcher this process did all the work.
    computed = annotator.computed if trainer.strategy.launcher is None else None
    if dist.is_available() and dist.is_initialized():
        # Script-launched ranks are all still here: wait for every shard, then merge once.
        total = torch.tensor(annotator.computed, device=trainer.strategy.root_device)
        computed = int(trainer.strategy.reduce(total, reduce_op="sum").item())
        trainer.strategy.barrier("annotate-merge")
    # Under ddp_spawn this is the launching process and the workers have exited: every shard is complete.
    if not trainer.is_global_zero:
        return None
    try:
        annotator.lock()  # held already unless the ranks were spawned workers that have exited
        summary = annotator.merge(items)
    finally:
        annotator.release()
    summary.computed = computed
    return summary
