"""LotusModule: Lightning training and evaluation of Lotus-G/D on the shared family base."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import sample_latents
from zoo.data.depth_protocols import DepthEvalProtocol, get_protocol
from zoo.data.depth_targets import is_disparity_norm, normalize_depth
from zoo.evaluation.base import Evaluator, sample_ids
from zoo.evaluation.depth import DepthEvaluator
from zoo.evaluation.normals import NormalEvaluator
from zoo.models.base import FamilyModule
from zoo.models.lotus.model import (
    Lotus,
    LotusTask,
    Mode,
    check_inference_steps,
    constant_normal_baseline,
    encode_target_distribution,
    latent_valid_mask,
)
from zoo.visualize import colorize_depth, colorize_normals, image_grid

# Synthetic scenes span about 0.5-10 m; the protocol only bounds valid GT and the aligned prediction.
SYNTHETIC_PROTOCOL = DepthEvalProtocol("synthetic", 1e-3, 20.0, None)


class LotusModule(FamilyModule):
    """Lightning training/evaluation of Lotus-G/D (official defaults: AdamW 3e-5 constant, wd 1e-2, t=999).

    `backbone` is a diffusers folder or hub id (stabilityai/stable-diffusion-2-base for the official recipe,
    checkpoints/tiny/backbone for the embedded default). Gradient clipping (1.0) is a Trainer option.
    `num_inference_steps` sets Lotus-G's evaluation steps (default 1, the official single step; D takes 1).
    """

    family = "lotus"

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        mode: Mode = "d",
        task: LotusTask = "depth",
        norm_type: str = "trunc_disparity",
        lr: float = 3e-5,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        reconstruction_weight: float = 1.0,
        sample_posterior: bool = True,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        log_images_every_n_val: int = 1,
        lotus_compat: bool = False,
        cache_latents: bool = False,
        lr_schedule: str = "constant",
        num_inference_steps: int = 1,
    ):
        super().__init__(ema_decay, log_images_every_n_val)
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {lr_schedule!r}")
        check_inference_steps(mode, num_inference_steps)
        self.save_hyperparameters()
        sd = StableDiffusionBackbone.from_pretrained(
            backbone, with_task_switcher=True, unet_in_channels=8 if mode == "g" else None
        )
        # diffusers returns loaded models in eval mode; the UNet trains (the frozen VAE stays in eval mode).
        sd.configure(gradient_checkpointing=gradient_checkpointing).train()
        self.model = Lotus(sd, mode, task)
        self.setup_ema()
        # (index, flipped) -> CPU posteriors (image mean, image std, target mean, target std), each [4, h, w].
        self._latent_cache: dict[tuple[int, bool], tuple[torch.Tensor, ...]] = {}

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The shared SD backbone inside the model."""
        return self.model.backbone

    @property
    def disparity(self) -> bool:
        """True when the depth target is a disparity (aligned in disparity space)."""
        return self.hparams.task == "depth" and is_disparity_norm(self.hparams.norm_type)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The UNet's parameters (the VAE is frozen)."""
        return self.backbone.unet.parameters()

    # ------------------------------------------------------------------ training
    def _posteriors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """VAE posteriors (image mean, image std, target mean, target std) of a batch, each [B, 4, h, w].

        With cache_latents, items seen before (same dataset index and flip) reuse their posteriors: the frozen
        VAE would return the same numbers. Only valid for datasets whose items are fixed per (index, flip).
        """
        cache = self.hparams.cache_latents
        keys = list(zip(batch["index"].tolist(), batch["flipped"].tolist(), strict=True)) if cache else []
        missing = [row for row, key in enumerate(keys) if key not in self._latent_cache]
        if not cache or missing:
            rows = missing if cache else list(range(batch["image"].shape[0]))
            part = {name: value[rows] for name, value in batch.items() if isinstance(value, torch.Tensor)}
            encoded = (
                *self.backbone.encode_images_distribution(part["image"]),
                *encode_target_distribution(self.backbone, self.hparams.task, part, self.hparams.norm_type),
            )
            if not cache:
                return encoded
            for position, row in enumerate(rows):
                self._latent_cache[keys[row]] = tuple(t[position].detach().cpu() for t in encoded)
        return tuple(
            torch.stack([self._latent_cache[key][part] for key in keys]).to(self.device) for part in range(4)
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Encode image and target (posterior samples, as the official scripts), then the joint latent MSE."""
        hp = self.hparams
        image_mean, image_std, target_mean, target_std = self._posteriors(batch)
        image_latents = (
            sample_latents(image_mean, image_std) if hp.sample_posterior else image_mean
        )  # [B, 4, h, w]
        target_latents = sample_latents(target_mean, target_std) if hp.sample_posterior else target_mean
        # Virtual KITTI supervises sky too (loss_mask = valid | sky); other readers supervise valid pixels.
        mask = latent_valid_mask(batch.get("loss_mask", batch["valid"]))  # [B, 4, h, w]
        losses = self.model.training_losses(image_latents, target_latents, mask, hp.reconstruction_weight)
        self.log_dict(
            {f"train/{name}": value for name, value in losses.items()},
            prog_bar=True,
            batch_size=image_latents.shape[0],
        )
        return losses["loss"]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_batch(
        self, images: torch.Tensor, generator: torch.Generator | None = None, processing_resolution: int = 0
    ) -> torch.Tensor:
        """Images in [0, 1] [B, 3, H, W] -> depth/disparity in [0, 1] [B, 1, H, W] or unit normals
        [B, 3, H, W]."""
        compat, steps = self.hparams.lotus_compat, self.hparams.num_inference_steps
        return self.model.predict(
            images, processing_resolution, True, generator, compat=compat, num_inference_steps=steps
        )[0]

    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """Depth: per-image Marigold metrics with the best-constant baseline; normals: pooled DSINE metrics.
        """
        if self.hparams.task == "depth":
            return {"depth": DepthEvaluator(constant_baseline=True)}
        return {"normals": NormalEvaluator(), "constant_normals": NormalEvaluator()}

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> torch.Tensor:
        """Predict a held-out batch with the predictor's steps and update the evaluators."""
        # Benchmark readers name their protocol (depth range, crop, processing resolution); synthetic data has
        # none.
        protocol = get_protocol(batch["dataset"][0]) if "dataset" in batch else SYNTHETIC_PROTOCOL
        # G draws its noise from a generator seeded by the first sample id, so evaluation is repeatable and
        # the same on any number of ranks.
        ids = list(sample_ids(batch, batch["image"].shape[0]))
        generator = torch.Generator(self.device).manual_seed(int(ids[0]))
        prediction = self.predict_batch(batch["image"], generator, protocol.processing_resolution)
        valid = batch["valid"]
        if self.hparams.task == "depth":
            alignment = "disparity" if self.disparity else "depth"
            self.evaluators["depth"].update(
                prediction, batch["depth"], valid, protocol, alignment, sample_ids=ids
            )
        else:
            self.evaluators["normals"].update(prediction, batch["normals"], valid, sample_ids=ids)
            constant = constant_normal_baseline(batch["normals"], valid)
            self.evaluators["constant_normals"].update(constant, batch["normals"], valid, sample_ids=ids)
        return prediction

    def epoch_metrics(self, results: dict[str, dict[str, float]]) -> dict[str, float]:
        """The task's metrics plus its best-constant baseline (depth AbsRel or normals mean angle)."""
        if self.hparams.task == "depth":
            return results["depth"]
        return {**results["normals"], "constant_baseline_mean": results["constant_normals"]["mean"]}

    def log_pictures(self, batch: dict[str, Any], outputs: torch.Tensor) -> list[tuple[str, np.ndarray]]:
        """image | ground truth | prediction for up to four validation images."""
        tiles = []
        for index in range(min(4, outputs.shape[0])):
            rgb = (batch["image"][index].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
            if self.hparams.task == "depth":
                # GT in the model's own target space (normalised per image) so both columns share one colour
                # scale.
                target = normalize_depth(batch["depth"][index], batch["valid"][index], self.hparams.norm_type)
                tiles += [
                    rgb,
                    colorize_depth(((target[0] + 1) / 2).cpu(), disparity=self.disparity),
                    colorize_depth(outputs[index, 0].cpu(), disparity=self.disparity),
                ]
            else:
                tiles += [
                    rgb,
                    colorize_normals(batch["normals"][index].permute(1, 2, 0).cpu()),
                    colorize_normals(outputs[index].permute(1, 2, 0).cpu()),
                ]
        return [(f"val/{self.hparams.task}", image_grid(tiles, columns=3))]

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict:
        """AdamW on the UNet only (official: 3e-5 constant, wd 1e-2, eps 1e-8); "cosine" decays to 0 at
        max_steps."""
        hp = self.hparams
        optimizer = self.adamw(
            [{"params": self.backbone.unet.parameters(), "lr": hp.lr}], hp.weight_decay, hp.betas
        )
        if hp.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_weights(self, folder: Path) -> None:
        """The backbone with the trained UNet; the frozen VAE is referenced from the base, not copied."""
        self.backbone.save_pretrained(folder, include_text_encoder=False, vae_from=self.hparams.backbone)

    def export_config(self) -> dict[str, Any]:
        """Mode, task and target normalisation for the predictor."""
        hp = self.hparams
        return {"mode": hp.mode, "task": hp.task, "norm_type": hp.norm_type, "disparity": self.disparity}
