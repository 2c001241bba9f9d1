"""SDPoseModule: Lightning training and COCO evaluation of SDPose."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone
from zoo.backbones.stable_diffusion import resolve_source
from zoo.codecs import UDPHeatmap, decode_udp_batched
from zoo.data.metainfo import load_metainfo
from zoo.data.transforms import BBOX_PADDING, decoded_to_crop, keypoints_to_image
from zoo.evaluation.coco import CocoKeypointEvaluator
from zoo.models.sdpose.model import HEAD_FILE, MODEL_CONFIG_FILE, SDPose, save_head
from zoo.visualize import colorize_heatmaps, draw_skeleton, image_grid


class SDPoseModule(pl.LightningModule):
    """Lightning training/evaluation of SDPose; defaults are the official body recipe (1024x768, sigma 6).

    Sizes are (w, h) as in mmpose. The optimiser is AdamW on the UNet (`lr`) and the new head (`head_lr`) with a
    linear warm-up and step decays at fractions of the run (SDPose's own values are unreleased: see the configs).
    Validation and test decode with the batched UDP decoder, map back to image pixels and score with COCO OKS AP
    against the datamodule's `val_ann_file` / `test_ann_file`.
    """

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        metainfo: str = "coco",
        input_size: tuple[int, int] = (768, 1024),
        heatmap_size: tuple[int, int] = (192, 256),
        sigma: float = 6.0,
        blur_kernel_size: int = 11,
        feature_site: str = "up_blocks.3",
        reconstruction_weight: float = 1.0,
        keypoint_loss_weight: float = 1.0,
        lr: float = 3e-5,
        head_lr: float = 5e-4,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        lr_milestones: tuple[float, ...] = (0.81, 0.95),
        lr_gamma: float = 0.1,
        flip_test: bool = True,
        gradient_checkpointing: bool = False,
        log_images_every_n_val: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.metainfo = load_metainfo(metainfo)
        self.codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma, blur_kernel_size=blur_kernel_size)
        sd = StableDiffusionBackbone.from_pretrained(backbone)
        sd.configure(gradient_checkpointing=gradient_checkpointing)
        # Lightning keeps module modes as they are: from_pretrained leaves the UNet in eval mode.
        self.model = SDPose(sd, self.metainfo.num_keypoints, feature_site).train()
        head_file = Path(resolve_source(backbone)) / HEAD_FILE
        if head_file.is_file():  # an exported SDPose folder as the backbone: start from its trained head too
            self.model.head.load_state_dict(load_file(str(head_file)), strict=True)
        # The head doubles the 1/8 latent grid: heatmaps are 1/4 of the (multiple-of-8) input.
        expected = tuple(-(-size // 8) * 2 for size in input_size)
        if tuple(heatmap_size) != expected:
            raise ValueError(f"heatmap_size {tuple(heatmap_size)} must be {expected} (input/4) for input {input_size}")
        self._evaluator: CocoKeypointEvaluator | None = None
        self._val_runs = 0

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The shared SD backbone inside the model."""
        return self.model.backbone

    # ------------------------------------------------------------------ steps
    def _check_input(self, images: torch.Tensor) -> None:
        size = (images.shape[-1], images.shape[-2])
        if size != tuple(self.hparams.input_size):
            raise ValueError(f"crops are {size} (w, h) but the model's input_size is {tuple(self.hparams.input_size)}")

    def encode_targets(self, keypoints: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """UDP Gaussian targets [B, K, H, W] and keypoint weights [B, K] of crop-pixel keypoints [B, K, 2]."""
        encoded = [self.codec.encode(k, v) for k, v in zip(keypoints.cpu().numpy(), visible.cpu().numpy(), strict=True)]
        heatmaps = torch.from_numpy(np.stack([e.heatmaps for e in encoded])).to(self.device)
        weights = torch.from_numpy(np.stack([e.keypoint_weights for e in encoded])).to(self.device)
        return heatmaps, weights

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Heatmap loss and RGB reconstruction loss, each logged on its own."""
        self._check_input(batch["image"])
        targets, weights = self.encode_targets(batch["keypoints"], batch["keypoints_visible"])
        hp = self.hparams
        losses = self.model.training_losses(
            batch["image"], targets, weights, batch.get("clean_image"), hp.reconstruction_weight, hp.keypoint_loss_weight
        )
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, prog_bar=True,
                      batch_size=batch["image"].shape[0])
        return losses["loss"]

    def predict_keypoints(self, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Image-pixel keypoints [B, K, 2], scores [B, K] and heatmaps [B, K, h, w] of a batch of crops."""
        self._check_input(batch["image"])
        flip_indices = self.metainfo.flip_indices if self.hparams.flip_test else None
        heatmaps = self.model.predict_heatmaps(batch["image"], flip_indices)
        keypoints, scores = decode_udp_batched(heatmaps, self.hparams.input_size, self.hparams.blur_kernel_size)
        crop = decoded_to_crop(keypoints.cpu().numpy(), self.hparams.input_size)  # [B, K, 2] crop pixels
        image = keypoints_to_image(
            crop, batch["warp_matrix"].cpu().numpy(), batch["flip"].cpu().numpy(), self.metainfo.flip_indices
        )
        return image, scores.cpu().numpy(), heatmaps

    def _evaluate_batch(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        keypoints, scores, heatmaps = self.predict_keypoints(batch)
        scale = batch["scale"].cpu().numpy()  # [B, 2] padded box size: mmpose's instance area for OKS-NMS
        for i in range(keypoints.shape[0]):
            self._evaluator.add(
                int(batch["image_id"][i]), keypoints[i : i + 1], scores[i : i + 1],
                bbox_scores=np.array([float(batch["bbox_score"][i])]), areas=np.array([scale[i].prod()]),
                instance_ids=[int(batch["instance_id"][i])],
            )
        if stage == "val" and batch_idx == 0:
            self._log_images(batch, heatmaps)

    def _log_images(self, batch: dict[str, Any], heatmaps: torch.Tensor) -> None:
        self._val_runs += 1
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image") or self._val_runs % self.hparams.log_images_every_n_val:
            return
        keypoints, scores = decode_udp_batched(heatmaps, self.hparams.input_size, self.hparams.blur_kernel_size)
        crop_keypoints = decoded_to_crop(keypoints.cpu().numpy(), self.hparams.input_size)
        tiles = []
        height, width = batch["image"].shape[-2:]
        for i in range(min(4, heatmaps.shape[0])):
            rgb = (batch["image"][i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            heat = torch.from_numpy(np.array(colorize_heatmaps(heatmaps[i].cpu()))).permute(2, 0, 1)[None].float()
            heat = F.interpolate(heat, (height, width), mode="nearest")[0].permute(1, 2, 0).byte().numpy()
            tiles += [draw_skeleton(rgb, crop_keypoints[i], scores[i].cpu().numpy(), self.metainfo), heat]
        writer.add_image("val/pose", image_grid(tiles, columns=2), self.global_step, dataformats="HWC")

    def _start_evaluation(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        ann_file = getattr(datamodule, f"{stage}_ann_file", None)
        if ann_file is None:
            raise RuntimeError(f"SDPoseModule evaluation needs a datamodule with `{stage}_ann_file` (the COCO ground truth)")
        self._evaluator = CocoKeypointEvaluator(ann_file, self.metainfo)

    def _finish_evaluation(self, stage: str) -> None:
        if self._evaluator is None or len(self._evaluator) == 0:
            return
        metrics = self._evaluator.evaluate()
        self.log_dict({f"{stage}/{name}": float(value) for name, value in metrics.items()})
        self._evaluator = None

    def on_validation_epoch_start(self) -> None:
        """A fresh evaluator on the validation ground truth."""
        self._start_evaluation("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict the held-out crops (flip test per config) and accumulate them for COCO AP."""
        self._evaluate_batch(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        """Log val/AP, val/AP50, ... val/AR."""
        self._finish_evaluation("val")

    def on_test_epoch_start(self) -> None:
        """A fresh evaluator on the test ground truth."""
        self._start_evaluation("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Same as validation on the test split."""
        self._evaluate_batch(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        """Log test/AP, ... test/AR."""
        self._finish_evaluation("test")

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: UNet at `lr`, head at `head_lr`; linear warm-up from 1e-3, x`lr_gamma` at each milestone fraction."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            [{"params": self.backbone.unet.parameters(), "lr": hp.lr},
             {"params": self.model.head.parameters(), "lr": hp.head_lr}],
            weight_decay=hp.weight_decay, betas=tuple(hp.betas), eps=1e-8,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        milestones = [int(fraction * total) for fraction in hp.lr_milestones]

        def factor(step: int) -> float:
            warmup = 1.0 if step >= hp.warmup_steps else 1e-3 + (1 - 1e-3) * step / hp.warmup_steps
            return warmup * hp.lr_gamma ** sum(step >= m for m in milestones)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_pretrained(self, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write a predictor-ready folder: backbone (no text encoder), decoder/decoder.safetensors, zoo_model.json."""
        from zoo.utils.files import atomic_write_json

        hp = self.hparams
        # The frozen VAE is the one the backbone was loaded from: reference it instead of copying it.
        self.backbone.save_pretrained(folder, include_text_encoder=False, vae_from=self.hparams.backbone)
        save_head(self.model.head, folder)
        atomic_write_json(Path(folder) / MODEL_CONFIG_FILE, {
            "family": "sdpose", "metainfo": hp.metainfo, "num_keypoints": self.metainfo.num_keypoints,
            "input_size": list(hp.input_size), "heatmap_size": list(hp.heatmap_size), "sigma": hp.sigma,
            "blur_kernel_size": hp.blur_kernel_size, "feature_site": hp.feature_site, "timestep": FINAL_TIMESTEP,
            "bbox_padding": BBOX_PADDING, **(extra or {}),
        })
