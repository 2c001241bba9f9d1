"""The LightningModule base every family shares: EMA, TensorBoard pictures, evaluator-driven val/test, export.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from zoo.evaluation.base import Evaluator
from zoo.models import MODEL_CONFIG_FILE
from zoo.utils.files import atomic_write_json


class FamilyModule(pl.LightningModule):
    """What every family's LightningModule repeats, done once.

    A family implements `trainable_parameters` (what EMA averages and what is exported), `make_evaluators`
    (fresh evaluators for a stage), `evaluation_step` (predict a batch, update the evaluators, return what
    `log_pictures` draws for the first batch), `export_weights` and `export_config` (what `export_pretrained`
    writes), and `epoch_metrics` when its evaluators' results need combining. The base keeps an optional EMA
    of the trainable parameters (diffusers' EMAModel: stepped after every optimiser step, swapped in for
    validation and export, saved in checkpoints), drives validation and test through the evaluator protocol
    (each evaluator gathers across ranks before computing, so `val/*` is right on any number of processes),
    logs a picture of the first validation batch every `log_images_every_n_val` runs, and builds AdamW over
    parameter groups.
    """

    family: str = ""

    def __init__(self, ema_decay: float | None = None, log_images_every_n_val: int = 1) -> None:
        super().__init__()
        self._ema_decay = ema_decay
        self._log_every = log_images_every_n_val
        self.ema: Any = None
        self._evaluators: dict[str, Evaluator] = {}
        self._val_runs = 0

    def setup_ema(self) -> None:
        """Create the EMA of `trainable_parameters()` (call at the end of a subclass's __init__)."""
        if self._ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(list(self.trainable_parameters()), decay=self._ema_decay)

    # ------------------------------------------------------------------ what a family provides
    @abstractmethod
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters that train (EMA averages exactly these)."""

    @abstractmethod
    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """Fresh evaluators for "val" or "test", by name."""

    @abstractmethod
    def evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> Any:
        """Predict a batch and update `self.evaluators`; returns what `log_pictures` draws (or None)."""

    def epoch_metrics(self, results: dict[str, dict[str, float]]) -> dict[str, float]:
        """Logged metrics: a single evaluator's results unprefixed, several evaluators' as name/metric."""
        if len(results) == 1:
            return next(iter(results.values()))
        return {
            f"{name}/{metric}": value for name, scores in results.items() for metric, value in scores.items()
        }

    def log_pictures(self, batch: Any, outputs: Any) -> list[tuple[str, np.ndarray]]:
        """(tag, HWC uint8 grid) pictures of the first validation batch; none by default."""
        return []

    @abstractmethod
    def export_weights(self, folder: Path) -> None:
        """Write the trained weights of a predictor-ready folder."""

    def export_config(self) -> dict[str, Any]:
        """The family's fields of zoo_model.json (the family name is added by the base)."""
        return {}

    # ------------------------------------------------------------------ evaluation loop
    @property
    def evaluators(self) -> dict[str, Evaluator]:
        """The evaluators of the running validation or test epoch."""
        return self._evaluators

    def _start(self, stage: str) -> None:
        self._evaluators = self.make_evaluators(stage)

    def _finish(self, stage: str) -> None:
        # compute() gathers every rank's state first: all ranks log the same numbers, so no sync_dist
        # reduction.
        results = {name: evaluator.compute() for name, evaluator in self._evaluators.items()}
        self.log_dict(
            {f"{stage}/{name}": float(value) for name, value in self.epoch_metrics(results).items()}
        )
        self._evaluators = {}

    def _step(self, batch: Any, batch_idx: int, stage: str) -> None:
        outputs = self.evaluation_step(batch, batch_idx, stage)
        if stage == "val" and batch_idx == 0:
            self._val_runs += 1
            writer = getattr(self.logger, "experiment", None)
            if writer is not None and hasattr(writer, "add_image") and self._val_runs % self._log_every == 0:
                for tag, grid in self.log_pictures(batch, outputs):
                    writer.add_image(tag, grid, self.global_step, dataformats="HWC")

    def on_validation_epoch_start(self) -> None:
        """Fresh evaluators; the EMA weights are evaluated when EMA is on."""
        if self.ema is not None:
            self.ema.store(self.trainable_parameters())
            self.ema.copy_to(self.trainable_parameters())
        self._start("val")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Predict the held-out batch and update the evaluators (and a picture for TensorBoard)."""
        self._step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        """Log the gathered split-level metrics; restore the raw weights after EMA evaluation."""
        self._finish("val")
        if self.ema is not None:
            self.ema.restore(self.trainable_parameters())

    def on_test_epoch_start(self) -> None:
        """Fresh evaluators for the test split."""
        self._start("test")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Same as validation on the test split."""
        self._step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        """Log the gathered test metrics."""
        self._finish("test")

    # ------------------------------------------------------------------ EMA and checkpoints
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Advance the EMA after each optimiser step."""
        if self.ema is not None:
            self.ema.to(self.device)
            self.ema.step(self.trainable_parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the EMA state with the checkpoint."""
        if self.ema is not None:
            checkpoint["ema_state"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the EMA state."""
        if self.ema is not None and "ema_state" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state"])

    @contextmanager
    def ema_weights(self, use_ema: bool = True) -> Iterator[None]:
        """The EMA weights in place for the duration of the block (a no-op without EMA)."""
        swap = self.ema is not None and use_ema
        if swap:
            self.ema.store(self.trainable_parameters())
            self.ema.copy_to(self.trainable_parameters())
        try:
            yield
        finally:
            if swap:
                self.ema.restore(self.trainable_parameters())

    def export_pretrained(self, folder: str | os.PathLike, use_ema: bool = True) -> None:
        """Write a predictor-ready folder (`zoo.load(folder)`): the family's weights and zoo_model.json."""
        folder = Path(folder)
        with self.ema_weights(use_ema):
            self.export_weights(folder)
        atomic_write_json(folder / MODEL_CONFIG_FILE, {"family": self.family, **self.export_config()})

    # ------------------------------------------------------------------ optimisation
    @staticmethod
    def adamw(
        groups: list[dict[str, Any]], weight_decay: float, betas: tuple[float, float]
    ) -> torch.optim.AdamW:
        """AdamW over parameter groups ({"params", "lr"}), eps 1e-8 as the official diffusion recipes."""
        return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=tuple(betas), eps=1e-8)
