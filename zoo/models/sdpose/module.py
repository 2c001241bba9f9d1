"""SDPoseModule: Lightning training and COCO evaluation of SDPose on the shared family base."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone
from zoo.backbones.stable_diffusion import LATENT_FACTOR, resolve_source
from zoo.codecs import UDPHeatmap, decode_udp_batched
from zoo.data.metainfo import load_metainfo
from zoo.data.transforms import BBOX_PADDING, decoded_to_crop, keypoints_to_image
from zoo.evaluation.base import Evaluator
from zoo.evaluation.coco import CocoKeypointEvaluator
from zoo.models.base import FamilyModule
from zoo.models.sdpose.model import HEAD_FILE, SDPose, save_head
from zoo.visualize import colorize_heatmaps, draw_skeleton, image_grid


class SDPoseModule(FamilyModule):
    """Lightning training/evaluation of SDPose; defaults are the official body recipe (1024x768, sigma 6).

    Sizes are (w, h) as in mmpose. The optimiser is AdamW on the UNet (`lr`) and the new head (`head_lr`) with
    a linear warm-up and step decays at fractions of the run
    (SDPose's own values are unreleased: see the configs). Validation and test decode with the batched UDP
    decoder, map back to image pixels and score with COCO OKS AP against the datamodule's `val_ann_file` /
    `test_ann_file`, gathered over all ranks.
    """

    family = "sdpose"

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
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(ema_decay, log_images_every_n_val)
        self.save_hyperparameters()
        self.metainfo = load_metainfo(metainfo)
        # The head doubles the 1/8 latent grid: heatmaps are 1/4 of the (multiple-of-8) input.
        expected = tuple(-(-size // LATENT_FACTOR) * 2 for size in input_size)
        if tuple(heatmap_size) != expected:
            raise ValueError(
                f"heatmap_size {tuple(heatmap_size)} must be {expected} (input/4) for input {input_size}"
            )
        self.codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma, blur_kernel_size=blur_kernel_size)
        sd = StableDiffusionBackbone.from_pretrained(backbone, with_task_switcher=True)
        sd.configure(gradient_checkpointing=gradient_checkpointing)
        # Lightning keeps module modes as they are: from_pretrained leaves the UNet in eval mode.
        self.model = SDPose(sd, self.metainfo.num_keypoints, feature_site).train()
        head_file = Path(resolve_source(backbone)) / HEAD_FILE
        if head_file.is_file():  # an exported SDPose folder as the backbone: start from its trained head too
            self.model.head.load_state_dict(load_file(str(head_file)), strict=True)
        self.setup_ema()

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The shared SD backbone inside the model."""
        return self.model.backbone

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The UNet's and the head's parameters."""
        return chain(self.backbone.unet.parameters(), self.model.head.parameters())

    # ------------------------------------------------------------------ steps
    def _check_input(self, images: torch.Tensor) -> None:
        size = (images.shape[-1], images.shape[-2])
        if size != tuple(self.hparams.input_size):
            raise ValueError(
                f"crops are {size} (w, h) but the model's input_size is {tuple(self.hparams.input_size)}"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Heatmap loss and RGB reconstruction loss, each logged on its own."""
        self._check_input(batch["image"])
        targets, weights = self.codec.encode_batch(batch["keypoints"], batch["keypoints_visible"])
        hp = self.hparams
        losses = self.model.training_losses(
            batch["image"],
            targets,
            weights,
            batch.get("clean_image"),
            hp.reconstruction_weight,
            hp.keypoint_loss_weight,
        )
        self.log_dict(
            {f"train/{name}": value for name, value in losses.items()},
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        return losses["loss"]

    def predict_keypoints(self, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Image-pixel keypoints [B, K, 2], scores [B, K] and heatmaps [B, K, h, w] of a batch of crops."""
        self._check_input(batch["image"])
        flip_indices = self.metainfo.flip_indices if self.hparams.flip_test else None
        heatmaps = self.model.predict_heatmaps(batch["image"], flip_indices)
        keypoints, scores = decode_udp_batched(
            heatmaps, self.hparams.input_size, self.hparams.blur_kernel_size
        )
        crop = decoded_to_crop(keypoints.cpu().numpy(), self.hparams.input_size)  # [B, K, 2] crop pixels
        image = keypoints_to_image(
            crop, batch["warp_matrix"].cpu().numpy(), batch["flip"].cpu().numpy(), self.metainfo.flip_indices
        )
        return image, scores.cpu().numpy(), heatmaps

    # ------------------------------------------------------------------ evaluation
    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """COCO OKS AP against the datamodule's ground truth of the stage."""
        datamodule = getattr(self.trainer, "datamodule", None)
        ann_file = getattr(datamodule, f"{stage}_ann_file", None)
        if ann_file is None:
            raise RuntimeError(
                f"SDPoseModule evaluation needs a datamodule with `{stage}_ann_file` (the COCO ground truth)"
            )
        return {"coco": CocoKeypointEvaluator(ann_file, self.metainfo)}

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> torch.Tensor:
        """Predict the crops (flip test per config); each crop is one instance of the COCO evaluator."""
        keypoints, scores, heatmaps = self.predict_keypoints(batch)
        scale = batch["scale"].cpu().numpy()  # [B, 2] padded box size: mmpose's instance area for OKS-NMS
        for i in range(keypoints.shape[0]):
            self.evaluators["coco"].update(
                int(batch["image_id"][i]),
                keypoints[i : i + 1],
                scores[i : i + 1],
                bbox_scores=np.array([float(batch["bbox_score"][i])]),
                areas=np.array([scale[i].prod()]),
                instance_ids=[int(batch["instance_id"][i])],
            )
        return heatmaps

    def log_pictures(self, batch: dict[str, Any], outputs: torch.Tensor) -> list[tuple[str, np.ndarray]]:
        """Skeleton overlays and heatmaps of up to four validation crops."""
        keypoints, scores = decode_udp_batched(
            outputs, self.hparams.input_size, self.hparams.blur_kernel_size
        )
        crop_keypoints = decoded_to_crop(keypoints.cpu().numpy(), self.hparams.input_size)
        tiles = []
        height, width = batch["image"].shape[-2:]
        for i in range(min(4, outputs.shape[0])):
            rgb = (batch["image"][i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            heat = (
                torch.from_numpy(np.array(colorize_heatmaps(outputs[i].cpu()))).permute(2, 0, 1)[None].float()
            )
            heat = F.interpolate(heat, (height, width), mode="nearest")[0].permute(1, 2, 0).byte().numpy()
            tiles += [draw_skeleton(rgb, crop_keypoints[i], scores[i].cpu().numpy(), self.metainfo), heat]
        return [("val/pose", image_grid(tiles, columns=2))]

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: UNet at `lr`, head at `head_lr`; linear warm-up from 1e-3, x`lr_gamma` at each milestone
        fraction."""
        hp = self.hparams
        optimizer = self.adamw(
            [
                {"params": self.backbone.unet.parameters(), "lr": hp.lr},
                {"params": self.model.head.parameters(), "lr": hp.head_lr},
            ],
            hp.weight_decay,
            hp.betas,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        milestones = [int(fraction * total) for fraction in hp.lr_milestones]

        def factor(step: int) -> float:
            warmup = 1.0 if step >= hp.warmup_steps else 1e-3 + (1 - 1e-3) * step / hp.warmup_steps
            return warmup * hp.lr_gamma ** sum(step >= m for m in milestones)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_weights(self, folder: Path) -> None:
        """Backbone (no text encoder; the frozen VAE referenced from the base) and
        decoder/decoder.safetensors."""
        self.backbone.save_pretrained(folder, include_text_encoder=False, vae_from=self.hparams.backbone)
        save_head(self.model.head, folder)

    def export_config(self) -> dict[str, Any]:
        """What PosePredictor needs: metainfo, sizes, codec settings and the feature site."""
        hp = self.hparams
        return {
            "metainfo": hp.metainfo,
            "num_keypoints": self.metainfo.num_keypoints,
            "input_size": list(hp.input_size),
            "heatmap_size": list(hp.heatmap_size),
            "sigma": hp.sigma,
            "blur_kernel_size": hp.blur_kernel_size,
            "feature_site": hp.feature_site,
            "timestep": FINAL_TIMESTEP,
            "bbox_padding": BBOX_PADDING,
        }
