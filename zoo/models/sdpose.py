"""SDPose (2025): top-down 2D pose from Stable Diffusion UNet decoder features at t=999, with a heatmap head.

The clean crop latent goes through the UNet once at t=999 without noise, with the annotation task code; a forward
tap on a decoder block (up_blocks.3 for COCO-17, up_blocks.2 for whole-body) feeds the heatmap head, whose UDP
heatmaps are at 1/4 of the input. Training adds the auxiliary RGB reconstruction of the clean (uncorrupted) crop
latent through the reconstruction task code, as Lotus's detail preserver.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone, tapped
from zoo.backbones.stable_diffusion import resolve_source
from zoo.codecs import flip_heatmaps
from zoo.heads.heatmap import HeatmapHead, keypoint_mse_loss

# The exported/official layout: the diffusers backbone folders plus the head where the official loader reads it.
HEAD_FILE = "decoder/decoder.safetensors"
MODEL_CONFIG_FILE = "zoo_model.json"

# The released checkpoints' feature sites (reference §1.3): last up block for body, second-to-last for whole-body.
OFFICIAL_FEATURE_SITES = {"coco": "up_blocks.3", "coco_wholebody": "up_blocks.2"}


def feature_channels(unet: nn.Module, site: str) -> int:
    """Channels of a UNet block's output (`up_blocks.N`, `down_blocks.N`, `mid_block`), from the UNet config."""
    widths = list(unet.config.block_out_channels)
    parts = site.split(".")
    if site == "mid_block":
        return widths[-1]
    if len(parts) == 2 and parts[0] in ("up_blocks", "down_blocks") and parts[1].isdigit():
        index = int(parts[1])
        ordered = widths[::-1] if parts[0] == "up_blocks" else widths
        if index < len(ordered):
            return ordered[index]
    raise ValueError(
        f"feature site {site!r}: cannot infer its channels; use a block output (up_blocks.N, down_blocks.N, mid_block)"
    )


class SDPose(nn.Module):
    """SD UNet (annotation task code, t=999, no noise) + a forward tap + HeatmapHead: crops -> heatmaps."""

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        num_keypoints: int,
        feature_site: str = "up_blocks.3",
        head: HeatmapHead | None = None,
    ) -> None:
        super().__init__()
        if backbone.unet.config.in_channels != 4:
            raise ValueError(f"SDPose feeds the 4-channel image latent; this UNet takes {backbone.unet.config.in_channels}")
        channels = feature_channels(backbone.unet, feature_site)
        head = head if head is not None else HeatmapHead(channels, num_keypoints)
        if head.in_channels != channels or head.out_channels != num_keypoints:
            raise ValueError(
                f"head maps {head.in_channels} -> {head.out_channels} channels, but {feature_site} has {channels} "
                f"channels and there are {num_keypoints} keypoints"
            )
        self.backbone, self.head, self.feature_site = backbone, head, feature_site

    def _unet(self, latents: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One UNet call on the latents repeated once per task: (UNet output [T*B, 4, h, w], features [T*B, C, h, w])."""
        batch = latents.shape[0]
        codes = torch.cat([self.backbone.task_codes(task, batch) for task in tasks])  # [T*B, 4]
        sample = latents.repeat(len(tasks), 1, 1, 1)  # [T*B, 4, h, w]; no noise at t=999 (Lotus-D style)
        with tapped(self.backbone.unet, {"features": self.feature_site}) as taps:
            output = self.backbone.unet_forward(sample, FINAL_TIMESTEP, task=None, class_labels=codes)
            features = taps.pop()["features"]
        return output, features

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        # Backbone autocast may hand over bf16 features; the head runs in its own dtype.
        return self.head(features.to(self.head.final_layer.weight.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Crops in [0, 1] [B, 3, H, W] -> heatmaps [B, K, H/4, W/4]."""
        latents = self.backbone.encode(images * 2 - 1)  # [B, 4, H/8, W/8], posterior mode
        _, features = self._unet(latents, ["annotation"])
        return self._head(features)

    @torch.no_grad()
    def predict_heatmaps(self, images: torch.Tensor, flip_indices: list[int] | tuple[int, ...] | None = None) -> torch.Tensor:
        """Heatmaps [B, K, H/4, W/4]; with `flip_indices`, averaged with the mirrored crops' (flip test, one call)."""
        if flip_indices is None:
            return self(images)
        batch = images.shape[0]
        heatmaps = self(torch.cat([images, images.flip(-1)]))  # [2B, K, h, w]
        # UDP: mirroring is exact on pixel centres, so no heatmap shift (mmpose shift_heatmap=False).
        return (heatmaps[:batch] + flip_heatmaps(heatmaps[batch:], flip_indices)) * 0.5

    def training_losses(
        self,
        images: torch.Tensor,
        target_heatmaps: torch.Tensor,
        keypoint_weights: torch.Tensor,
        clean_images: torch.Tensor | None = None,
        reconstruction_weight: float = 1.0,
        keypoint_loss_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Heatmap MSE (target weights) + latent MSE of the clean crop through the reconstruction code.

        With reconstruction the batch is duplicated into one UNet call (annotation half, reconstruction half, as
        Lotus); with `reconstruction_weight` 0 the reconstruction half, its target encoding and its term are gone.
        """
        batch = images.shape[0]
        latents = self.backbone.encode(images * 2 - 1)  # [B, 4, h, w] of the corrupted network input
        reconstruct = reconstruction_weight > 0
        if reconstruct and clean_images is None:
            raise ValueError("the reconstruction branch needs the clean crops (batch['clean_image'])")
        output, features = self._unet(latents, ["annotation", "reconstruction"] if reconstruct else ["annotation"])
        heatmaps = self._head(features[:batch])  # [B, K, H/4, W/4]
        loss_keypoint = keypoint_mse_loss(heatmaps, target_heatmaps, keypoint_weights, keypoint_loss_weight)
        losses = {"loss_keypoint": loss_keypoint}
        total = loss_keypoint
        if reconstruct:
            clean_latents = self.backbone.encode(clean_images * 2 - 1)  # [B, 4, h, w], the pre-corruption crop
            losses["loss_reconstruction"] = F.mse_loss(output[batch:], clean_latents)
            total = total + reconstruction_weight * losses["loss_reconstruction"]
        losses["loss"] = total
        return losses


def save_head(head: HeatmapHead, folder: str | os.PathLike) -> Path:
    """Write the head's weights where the official loader expects them (decoder/decoder.safetensors)."""
    path = Path(folder) / HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}, str(path))
    return path


def load_sdpose(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> tuple[SDPose, dict[str, Any]]:
    """Load an exported SDPose folder (backbone + decoder/decoder.safetensors + zoo_model.json): (model, config)."""
    folder = Path(folder)
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    if config.get("family") != "sdpose":
        raise ValueError(f"{folder / MODEL_CONFIG_FILE} describes family {config.get('family')!r}, not 'sdpose'")
    backbone = StableDiffusionBackbone.from_pretrained(folder, torch_dtype=torch_dtype)
    state = load_file(str(folder / HEAD_FILE))
    head = HeatmapHead(feature_channels(backbone.unet, config["feature_site"]), config["num_keypoints"])
    head.load_state_dict(state, strict=True)
    return SDPose(backbone, config["num_keypoints"], config["feature_site"], head).eval(), config


# ---------------------------------------------------------------------------------------------------- training
import lightning.pytorch as pl  # noqa: E402

from zoo.codecs import UDPHeatmap, decode_udp_batched  # noqa: E402
from zoo.data.metainfo import load_metainfo  # noqa: E402
from zoo.data.transforms import BBOX_PADDING, decoded_to_crop, keypoints_to_image  # noqa: E402
from zoo.evaluation.coco import CocoKeypointEvaluator  # noqa: E402
from zoo.visualize import colorize_heatmaps, draw_skeleton, image_grid  # noqa: E402


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
