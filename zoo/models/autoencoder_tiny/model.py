"""Distilling an AutoencoderTiny from an SD VAE: the encoder matches its latents, the decoder its decodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.autoencoder_tiny import taesd_from_config
from zoo.backbones.stable_diffusion import LATENT_FACTOR
from zoo.data.depth_targets import normalize_depth, target_to_rgb


def tiny_taesd(width: int = 32) -> AutoencoderTiny:
    """TAESD's layout (block counts, ReLU, nearest upsampling, latent clamp) at `width` channels per block."""
    return taesd_from_config(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4)


def distillation_images(batch: dict[str, torch.Tensor], norm_type: str = "trunc_disparity") -> torch.Tensor:
    """What the VAE sees in the zoo, per scene: the RGB image, the depth target and the normal map.

    Returns [B, 3, 3, H, W] in [-1, 1]: per scene the RGB image, the depth target as Lotus encodes it and the
    normal map.
    """
    depth = torch.stack(
        [
            target_to_rgb(normalize_depth(d, v, norm_type))
            for d, v in zip(batch["depth"], batch["valid"], strict=True)
        ]
    )  # [B, 3, H, W]
    return torch.stack([batch["image"] * 2 - 1, depth, batch["normals"]], dim=1)


@torch.no_grad()
def teacher_targets(
    backbone: StableDiffusionBackbone, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's scaled posterior mean [N, 4, h, w] of images [N, 3, H, W] and its decode [N, 3, H, W]."""
    mean = backbone.encode(images)  # [N, 4, h, w], posterior mode, as every predictor encodes
    return mean, backbone.decode(mean, size=images.shape[-2:])


def aligned_crops(
    images: torch.Tensor, latents: torch.Tensor, decoded: torch.Tensor, crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random crop per item, at the same place in pixels (crop x crop) and latents (crop/8), on the grid.

    Crops make a step several times cheaper; the latent grid alignment keeps pixel and latent targets paired.
    """
    cells, size = crop // LATENT_FACTOR, latents.shape[-1]
    out: tuple[list[torch.Tensor], ...] = ([], [], [])
    for index in range(images.shape[0]):
        top, left = (int(v) for v in torch.randint(latents.shape[-2] - cells + 1, (2,), generator=generator))
        left = min(left, size - cells)
        pixel = (
            slice(top * LATENT_FACTOR, (top + cells) * LATENT_FACTOR),
            slice(left * LATENT_FACTOR, (left + cells) * LATENT_FACTOR),
        )
        out[0].append(images[index, :, pixel[0], pixel[1]])
        out[1].append(latents[index, :, top : top + cells, left : left + cells])
        out[2].append(decoded[index, :, pixel[0], pixel[1]])
    return tuple(torch.stack(part) for part in out)  # [N, 3, crop, crop], [N, 4, crop/8, crop/8], [N, 3, ...]


def distillation_losses(
    student: AutoencoderTiny, images: torch.Tensor, latents: torch.Tensor, decoded: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Encoder MSE to the VAE's latents [N, 4, h, w]; decoder L1 to the VAE's decodes [N, 3, H, W] of them."""
    loss_encoder = F.mse_loss(student.encode(images).latents, latents)
    loss_decoder = F.l1_loss(student.decode(latents).sample, decoded)
    return {"loss_encoder": loss_encoder, "loss_decoder": loss_decoder, "loss": loss_encoder + loss_decoder}
