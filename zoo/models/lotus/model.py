"""Lotus (ICLR 2025): single-step x0 prediction of depth or normals at t=999 on the shared SD backbone.

Lotus-G feeds [image latent, noisy target latent] (8 channels) and starts from pure noise at inference;
Lotus-D feeds the image latent alone (4 channels) with no noise. Both are trained jointly with RGB
reconstruction through the task switcher ("detail preserver").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from torch import nn

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone
from zoo.backbones.stable_diffusion import LATENT_FACTOR
from zoo.data.depth_targets import normalize_depth, target_to_rgb

Mode = Literal["g", "d"]
LotusTask = Literal["depth", "normals"]


# Native processing of larger images needs tens of GB of activations; ask for a processing resolution instead.
MAX_NATIVE_PIXELS = 4096 * 4096


def latent_valid_mask(valid: torch.Tensor) -> torch.Tensor:
    """Pixel validity [B, 1, H, W] -> latent validity [B, 4, H/8, W/8]: any invalid pixel invalidates its
    cell."""
    invalid = F.max_pool2d((~valid).float(), LATENT_FACTOR, LATENT_FACTOR, ceil_mode=True)  # [B, 1, h, w]
    return (invalid < 0.5).expand(-1, 4, -1, -1)


class Lotus(nn.Module):
    """Lotus-G or Lotus-D for one task around a StableDiffusionBackbone."""

    def __init__(self, backbone: StableDiffusionBackbone, mode: Mode = "d", task: LotusTask = "depth"):
        super().__init__()
        if mode not in ("g", "d"):
            raise ValueError(f"mode must be 'g' (generative) or 'd' (regression); got {mode!r}")
        if task not in ("depth", "normals"):
            raise ValueError(f"task must be 'depth' or 'normals'; got {task!r}")
        if backbone.unet.config.class_embed_type is None:
            raise ValueError("Lotus needs the task switcher: load the backbone with with_task_switcher=True")
        self.backbone, self.mode, self.task = backbone, mode, task
        expected_channels = 8 if mode == "g" else 4
        if backbone.unet.config.in_channels != expected_channels:
            if mode == "g" and backbone.unet.config.in_channels == 4:
                backbone.set_unet_in_channels(8)  # the official G surgery: repeat and halve conv_in
            else:
                raise ValueError(
                    f"Lotus-{mode.upper()} needs a UNet with {expected_channels} input channels; "
                    f"this one has {backbone.unet.config.in_channels}"
                )

    def unet_input(self, image_latents: torch.Tensor, target_latents: torch.Tensor | None) -> torch.Tensor:
        """The UNet input: D = image latent [B, 4, h, w]; G = [image latent, target latent] [B, 8, h, w]."""
        if self.mode == "d":
            return image_latents
        if target_latents is None:
            raise ValueError("Lotus-G needs the noisy target (or pure noise) latent")
        return torch.cat([image_latents, target_latents], dim=1)

    def predict_latents(
        self,
        image_latents: torch.Tensor,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 1,
    ) -> torch.Tensor:
        """x0 latents [B, 4, h, w]: one UNet call at t=999 with the annotation code (the official Lotus).

        For G, `latents` is the starting noise (drawn with `generator` when not given); D ignores both.
        G with `num_inference_steps` > 1 runs deterministic DDIM (eta 0) on the x0 predictions over trailing
        timesteps (999, then evenly down: 999, 499 for 2; 999, 749, 499, 249 for 4), re-noising each x0
        towards the next timestep with the noise it implies; Lotus is trained at t=999 only, so the later
        steps ask the model about inputs it was not trained on (their accuracy is measured, not assumed).
        D is a single regression call.
        """
        check_inference_steps(self.mode, num_inference_steps)
        if self.mode == "d":
            return self.backbone.unet_forward(image_latents, FINAL_TIMESTEP, task="annotation")
        noise = latents
        if noise is None:
            noise = torch.randn(image_latents.shape, generator=generator, device=image_latents.device)
        sample = noise.to(image_latents)
        scheduler = lotus_g_scheduler(self.backbone.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=image_latents.device)
        x0 = sample
        for index, timestep in enumerate(scheduler.timesteps):
            sample_in = self.unet_input(image_latents, sample)  # [B, 8, h, w]
            x0 = self.backbone.unet_forward(sample_in, int(timestep), "annotation")
            if index + 1 < num_inference_steps:
                sample = scheduler.step(x0, timestep, sample).prev_sample
        return x0

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        resolution: int = 0,
        match_input: bool = True,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        compat: bool = False,
        num_inference_steps: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] [B, 3, H, W] -> (prediction [B, C, H', W'], x0 latents [B, 4, h, w]) on the
        device.

        `resolution` is the longest edge the model sees (0 = native); the prediction is resized back to the
        input size when `match_input`. compat=True reproduces the official pipeline
        (posterior sample from the global RNG, no padding, per-channel clamp then mean, nearest resize back);
        the default is deterministic
        (posterior mode, replicate padding to x8, Marigold post-processing and bilinear resize back).
        `num_inference_steps` (G only, default 1 as the official Lotus-G): see predict_latents.
        """
        height, width = images.shape[-2:]
        size = processing_size(height, width, resolution)
        pixels = images.to(self.backbone.device)
        if size != (height, width):
            pixels = F.interpolate(pixels, size, mode="bilinear", antialias=True, align_corners=False)
        image_latents = self.backbone.encode_images(pixels, sample=compat, pad=not compat)  # [B, 4, h, w]
        x0 = self.predict_latents(image_latents, latents, generator, num_inference_steps)
        decoded = self.backbone.decode(x0, size=None if compat else size)  # [B, 3, h*8 | H', w*8 | W']
        prediction = decode_prediction(decoded, self.task, compat=compat)  # [B, C, ., .]
        if match_input and prediction.shape[-2:] != (height, width):
            if compat:
                prediction = F.interpolate(prediction, (height, width), mode="nearest-exact")
            else:
                prediction = MarigoldImageProcessor.resize_antialias(prediction, (height, width), "bilinear")
                if self.task == "normals":
                    prediction = F.normalize(prediction, dim=1, eps=1e-6)
        return prediction, x0

    def training_losses(
        self,
        image_latents: torch.Tensor,
        target_latents: torch.Tensor,
        latent_mask: torch.Tensor,
        reconstruction_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Joint annotation + RGB reconstruction loss on one duplicated batch (official recipe, MSE on x0)."""
        batch = image_latents.shape[0]
        targets = [target_latents]
        tasks = ["annotation"]
        if reconstruction_weight > 0:
            targets.append(image_latents)  # the reconstruction half predicts the clean image latent itself
            tasks.append("reconstruction")
        clean = torch.cat(targets)  # [2B, 4, h, w] (or [B, ...] without reconstruction)
        images = image_latents.repeat(len(targets), 1, 1, 1)
        noisy = None
        if self.mode == "g":
            noise = torch.randn(clean.shape, generator=generator, device=clean.device).to(clean)
            noisy = self.backbone.add_noise(clean, noise, FINAL_TIMESTEP)
        # One UNet call: the first half carries the annotation code, the second the reconstruction code.
        prediction = self.backbone.unet_forward(self.unet_input(images, noisy), FINAL_TIMESTEP, task=tasks)
        annotation = F.mse_loss(prediction[:batch][latent_mask], target_latents[latent_mask].float())
        losses = {"loss_annotation": annotation}
        total = annotation
        if reconstruction_weight > 0:
            reconstruction = F.mse_loss(prediction[batch:], image_latents.float())
            losses["loss_reconstruction"] = reconstruction
            total = total + reconstruction_weight * reconstruction
        losses["loss"] = total
        return losses


def check_inference_steps(mode: Mode, num_inference_steps: int) -> None:
    """Lotus-G takes any number of steps >= 1; Lotus-D is one regression call."""
    if num_inference_steps < 1 or (mode == "d" and num_inference_steps != 1):
        raise ValueError(
            f"num_inference_steps must be >= 1 for Lotus-G and 1 for Lotus-D; got {num_inference_steps} "
            f"for Lotus-{mode.upper()}"
        )


def lotus_g_scheduler(config: Mapping[str, Any]) -> DDIMScheduler:
    """DDIM over the backbone's noise schedule on x0 predictions, trailing timesteps (the first is t=999)."""
    return DDIMScheduler.from_config(
        dict(config),
        prediction_type="sample",
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        steps_offset=0,
        clip_sample=False,
        thresholding=False,
    )


def processing_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H', W') the model sees: the longest edge scaled to `resolution`
    (0 = native, bounded by MAX_NATIVE_PIXELS)."""
    if resolution == 0:
        if height * width > MAX_NATIVE_PIXELS:
            raise ValueError(f"{width}x{height} is too large to process natively; pass processing_resolution")
        return height, width
    scale = resolution / max(height, width)
    # Marigold floors; the official Lotus pipeline truncates with int() - the same for positive sizes.
    return max(1, int(height * scale)), max(1, int(width * scale))


def encode_target_distribution(
    backbone: StableDiffusionBackbone,
    task: LotusTask,
    batch: dict[str, torch.Tensor],
    norm_type: str = "trunc_disparity",
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior (mean, std) [B, 4, h, w] of a batch's ground truth (depth normalised per image first)."""
    valid = batch["valid"]
    if task == "depth":
        target = torch.stack(
            [normalize_depth(d, v, norm_type) for d, v in zip(batch["depth"], valid, strict=True)]
        )  # [B,1,H,W]
        images = target_to_rgb(target)
    else:
        images = batch["normals"].clamp(-1, 1) * valid  # [B, 3, H, W]
    return backbone.encode_distribution(images)


def constant_normal_baseline(normals: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each image's best single direction: its normalised mean GT normal, everywhere ([B, 3, H, W]).

    The floor a normal model has to beat (stronger than any fixed direction such as (0, 0, 1)).
    """
    mean = (normals * valid).sum(dim=(-2, -1), keepdim=True)  # [B, 3, 1, 1]
    return F.normalize(mean, dim=1, eps=1e-6).expand_as(normals)


def decode_prediction(decoded: torch.Tensor, task: LotusTask, compat: bool = False) -> torch.Tensor:
    """VAE output [B, 3, H, W] in about [-1, 1] -> depth in [0, 1] [B, 1, H, W] or unit normals [B, 3, H, W].

    compat=True reproduces the official post-processing (clamp each channel to [0, 1], then the channel mean;
    normals x2-1 without renormalisation); the default follows Marigold (mean, clip, (x+1)/2; unit normals).
    """
    if task == "depth":
        if compat:
            return ((decoded / 2 + 0.5).clamp(0, 1)).mean(dim=1, keepdim=True)
        return (decoded.mean(dim=1, keepdim=True).clamp(-1, 1) + 1) / 2
    if compat:
        return (decoded / 2 + 0.5).clamp(0, 1) * 2 - 1
    return F.normalize(decoded.clamp(-1, 1), dim=1, eps=1e-6)
