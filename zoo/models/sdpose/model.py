"""SDPose (2025): top-down 2D pose from Stable Diffusion UNet decoder features at t=999, with a heatmap head.

The clean crop latent goes through the UNet once at t=999 without noise, with the annotation task code; a
forward tap on a decoder block (up_blocks.3 for COCO-17, up_blocks.2 for whole-body) feeds the heatmap head,
whose UDP heatmaps are at 1/4 of the input. Training adds the auxiliary RGB reconstruction of the clean
(uncorrupted) crop latent through the reconstruction task code, as Lotus's detail preserver.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone, tapped
from zoo.codecs import flip_heatmaps
from zoo.heads.heatmap import HeatmapHead, keypoint_mse_loss
from zoo.models import MODEL_CONFIG_FILE

# The exported/official layout: the diffusers backbone folders plus the head where the official loader reads
# it.
HEAD_FILE = "decoder/decoder.safetensors"

# The released checkpoints' feature sites (reference §1.3): last up block for body, second-to-last for
# whole-body.
OFFICIAL_FEATURE_SITES = {"coco": "up_blocks.3", "coco_wholebody": "up_blocks.2"}


def feature_channels(unet: nn.Module, site: str) -> int:
    """Channels of a UNet block's output (`up_blocks.N`, `down_blocks.N`, `mid_block`), from the UNet config.
    """
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
        f"feature site {site!r}: cannot infer its channels; use a block output "
        "(up_blocks.N, down_blocks.N, mid_block)"
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
        if backbone.unet.config.class_embed_type is None:
            raise ValueError("SDPose needs the task switcher: load the backbone with with_task_switcher=True")
        if backbone.unet.config.in_channels != 4:
            raise ValueError(
                f"SDPose feeds the 4-channel image latent; this UNet takes {backbone.unet.config.in_channels}"
            )
        channels = feature_channels(backbone.unet, feature_site)
        head = head if head is not None else HeatmapHead(channels, num_keypoints)
        if head.in_channels != channels or head.out_channels != num_keypoints:
            raise ValueError(
                f"head maps {head.in_channels} -> {head.out_channels} channels, "
                f"but {feature_site} has {channels} "
                f"channels and there are {num_keypoints} keypoints"
            )
        self.backbone, self.head, self.feature_site = backbone, head, feature_site

    def _unet(self, latents: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One UNet call on the latents repeated once per task:
        (UNet output [T*B, 4, h, w], features [T*B, C, h, w])."""
        sample = latents.repeat(len(tasks), 1, 1, 1)  # [T*B, 4, h, w]; no noise at t=999 (Lotus-D style)
        with tapped(self.backbone.unet, {"features": self.feature_site}) as taps:
            output = self.backbone.unet_forward(sample, FINAL_TIMESTEP, task=tasks)
            features = taps.pop()["features"]
        return output, features

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        # Backbone autocast may hand over bf16 features; the head runs in its own dtype.
        return self.head(features.to(self.head.final_layer.weight.dtype))

    def forward(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Crops in [0, 1] [B, 3, H, W] -> heatmaps [B, K, H/4, W/4]
        (posterior mode; `sample` draws the latent)."""
        latents = self.backbone.encode_images(images, sample, generator)  # [B, 4, H/8, W/8]
        _, features = self._unet(latents, ["annotation"])
        return self._head(features)

    @torch.no_grad()
    def predict_heatmaps(
        self,
        images: torch.Tensor,
        flip_indices: list[int] | tuple[int, ...] | None = None,
        official: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Heatmaps [B, K, H/4, W/4]; with `flip_indices`, averaged with the mirrored crops'
        (flip test, one call).

        official=True runs as the official evaluation: a VAE posterior sample
        (from `generator`, the global RNG when None), and under flip test the mirrored crops as a second
        encode and UNet call after the first, so that the noise draws follow the official order.
        """
        if official:
            heatmaps = self(images, sample=True, generator=generator)
            if flip_indices is None:
                return heatmaps
            mirrored = self(images.flip(-1), sample=True, generator=generator)
            return (heatmaps + flip_heatmaps(mirrored, flip_indices)) * 0.5
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

        With reconstruction the batch is duplicated into one UNet call
        (annotation half, reconstruction half, as Lotus); with `reconstruction_weight` 0 the reconstruction
        half, its target encoding and its term are gone.
        """
        batch = images.shape[0]
        latents = self.backbone.encode_images(images)  # [B, 4, h, w] of the corrupted network input
        reconstruct = reconstruction_weight > 0
        if reconstruct and clean_images is None:
            raise ValueError("the reconstruction branch needs the clean crops (batch['clean_image'])")
        output, features = self._unet(
            latents, ["annotation", "reconstruction"] if reconstruct else ["annotation"]
        )
        heatmaps = self._head(features[:batch])  # [B, K, H/4, W/4]
        loss_keypoint = keypoint_mse_loss(heatmaps, target_heatmaps, keypoint_weights, keypoint_loss_weight)
        losses = {"loss_keypoint": loss_keypoint}
        total = loss_keypoint
        if reconstruct:
            clean_latents = self.backbone.encode_images(clean_images)  # [B, 4, h, w], the pre-corruption crop
            losses["loss_reconstruction"] = F.mse_loss(output[batch:], clean_latents)
            total = total + reconstruction_weight * losses["loss_reconstruction"]
        losses["loss"] = total
        return losses


def save_head(head: HeatmapHead, folder: str | os.PathLike) -> Path:
    """Write the head's weights where the official loader expects them (decoder/decoder.safetensors)."""
    path = Path(folder) / HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}, str(path)
    )
    return path


def load_sdpose(
    folder: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> tuple[SDPose, dict[str, Any]]:
    """Load an exported SDPose folder (backbone + decoder/decoder.safetensors + zoo_model.json):
    (model, config)."""
    folder = Path(folder)
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    if config.get("family") != "sdpose":
        raise ValueError(
            f"{folder / MODEL_CONFIG_FILE} describes family {config.get('family')!r}, not 'sdpose'"
        )
    backbone = StableDiffusionBackbone.from_pretrained(
        folder, with_task_switcher=True, torch_dtype=torch_dtype
    )
    state = load_file(str(folder / HEAD_FILE))
    head = HeatmapHead(feature_channels(backbone.unet, config["feature_site"]), config["num_keypoints"])
    head.load_state_dict(state, strict=True)
    return SDPose(backbone, config["num_keypoints"], config["feature_site"], head).eval(), config
