"""Text-to-image diffusion as SD2-base: epsilon prediction on VAE latents, CLIP text, CFG sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, SchedulerMixin
from torch import nn

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import LATENT_FACTOR

# Timestep bands of the held-out denoising loss (inclusive lower, exclusive upper bound).
TIMESTEP_BANDS: tuple[tuple[int, int], ...] = ((0, 250), (250, 500), (500, 750), (750, 1000))


class TextToImage(nn.Module):
    """A UNet that predicts the noise of noisy latents given CLIP hidden states of a caption.

    The backbone's DDPMScheduler is the training noise schedule (SD2's scaled-linear betas, epsilon
    prediction); sampling uses DDIM from the same config. With `train_text_encoder` the text encoder
    learns with the UNet.
    """

    def __init__(self, backbone: StableDiffusionBackbone, train_text_encoder: bool = True):
        super().__init__()
        if backbone.text_encoder is None or backbone.tokenizer is None:
            raise ValueError(
                "text-to-image needs the backbone's text stack; load it with load_text_encoder=True"
            )
        if backbone.unet.config.class_embed_type is not None:
            raise ValueError(
                "text-to-image needs a UNet without a class embedding (load with_task_switcher=False)"
            )
        if backbone.scheduler.config.prediction_type != "epsilon":
            raise ValueError(
                f"the backbone scheduler predicts {backbone.scheduler.config.prediction_type!r}; "
                "this family trains epsilon prediction as SD2-base"
            )
        self.backbone = backbone
        self.train_text_encoder = train_text_encoder
        backbone.text_encoder.requires_grad_(train_text_encoder)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP hidden states of prompts padded to the tokenizer's length (as SD): [B, 77, D]."""
        tokens = self.backbone.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            max_length=self.backbone.tokenizer.model_max_length,
        )
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.backbone.text_encoder(tokens.input_ids.to(self.backbone.device))[0].float()

    def denoising_losses(
        self, latents: torch.Tensor, embeds: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample epsilon MSE [B] of clean latents [B, 4, h, w] noised to `timesteps` [B] with `noise`."""
        noisy = self.backbone.scheduler.add_noise(latents, noise, timesteps)  # [B, 4, h, w]
        predicted = self.backbone.unet_forward(noisy, timesteps, task=None, encoder_hidden_states=embeds)
        return F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))

    def training_loss(self, latents: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """SD's objective: uniform timesteps, Gaussian noise (global RNG), mean epsilon MSE."""
        steps = self.backbone.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noise = torch.randn_like(latents)
        return self.denoising_losses(latents, self.embed(prompts), timesteps, noise).mean()

    @torch.no_grad()
    def banded_losses(
        self, latents: torch.Tensor, prompts: Sequence[str], generator: torch.Generator, per_band: int = 4
    ) -> dict[tuple[int, int], torch.Tensor]:
        """Held-out epsilon MSE per timestep band, `per_band` seeded draws on latents [B, 4, h, w]: [B]."""
        embeds = self.embed(prompts)
        losses = {}
        for low, high in TIMESTEP_BANDS:
            total = torch.zeros(latents.shape[0], device=latents.device)
            for _ in range(per_band):
                timesteps = torch.randint(low, high, (latents.shape[0],), generator=generator).to(
                    latents.device
                )
                noise = torch.randn(latents.shape, generator=generator).to(latents.device)
                total += self.denoising_losses(latents, embeds, timesteps, noise)
            losses[(low, high)] = total / per_band
        return losses

    def ddim_scheduler(self) -> DDIMScheduler:
        """DDIM with the training schedule (SD2-base's sampling settings: no alpha_T = 1, steps offset 1)."""
        return DDIMScheduler.from_config(self.backbone.scheduler.config, set_alpha_to_one=False)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        height: int = 64,
        width: int = 64,
        scheduler: SchedulerMixin | None = None,
    ) -> torch.Tensor:
        """Images [B, 3, height, width] in [0, 1] from prompts; guidance_scale 1 turns guidance off.

        `scheduler`: any diffusers scheduler made from the training config (DDIM, eta 0, when None).
        """
        scheduler = scheduler or self.ddim_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=self.backbone.device)
        batch = len(prompts)
        shape = (
            batch,
            self.backbone.unet.config.in_channels,
            height // LATENT_FACTOR,
            width // LATENT_FACTOR,
        )
        latents = (
            torch.randn(shape, generator=generator).to(self.backbone.device) * scheduler.init_noise_sigma
        )
        guided = guidance_scale != 1.0
        embeds = self.embed(
            [*([""] * batch if guided else []), *prompts]
        )  # [(1|2)B, 77, D]: unconditional first
        for timestep in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            noise = self.backbone.unet_forward(
                model_input, timestep.expand(model_input.shape[0]), task=None, encoder_hidden_states=embeds
            )
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(noise, timestep, latents, generator=generator).prev_sample
        return ((self.backbone.decode(latents) + 1) / 2).clamp(0, 1)
