"""Question-conditioned Stable Diffusion features (Mustafar): one noisy UNet pass, tapped at named sites."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.backbones import StableDiffusionBackbone, tapped
from zoo.backbones.taps import resolve_site

logger = logging.getLogger(__name__)

# U-L1-R1-B0-Cross-Q of the paper: the cross-attention query of the first cross-attention up block.
DEFAULT_SITE = "up_blocks.1.attentions.1.transformer_blocks.0.attn2:query"
DEFAULT_TIMESTEP = 50  # the paper's default; t in [10, 100] works best, t = 500 collapses
_GRID_FACTORS = (1, 2, 4, 8, 16, 32, 64)


def site_channels(unet: nn.Module, site: str) -> int:
    """Channel width of the features at `site` (a "path:query" projection or a block with out_channels)."""
    module = resolve_site(unet, site)
    if isinstance(module, nn.Linear):
        return module.out_features
    for candidate in (module, *getattr(module, "resnets", ())[-1:]):
        if isinstance(getattr(candidate, "out_channels", None), int):
            return candidate.out_channels
    raise ValueError(f"feature site {site!r}: cannot tell the channel width of a {type(module).__name__}")


def _grid(tokens: int, latent_size: tuple[int, int], site: str) -> tuple[int, int]:
    """The (h, w) grid of a site holding `tokens` tokens for a latent of `latent_size` (stride-2 ceil)."""
    height, width = latent_size
    for factor in _GRID_FACTORS:
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        if grid[0] * grid[1] == tokens:
            return grid
    raise ValueError(
        f"feature site {site!r}: {tokens} tokens fit no downsampled grid of the {height}x{width} latent"
    )


class SDFeatureExtractor(nn.Module):
    """Mustafar's task-aware SD encoder: images [B, 3, H, W] in [0, 1] (+ prompts) -> tokens [B, N, C].

    The image's VAE latent (posterior mode) gets noise at `timestep`, the frozen UNet runs once with the
    prompt (the question) through the backbone's text encoder, and forward hooks read the features at
    `sites`.
    Guidance acts in feature space, f = f_uncond + s (f_cond - f_uncond): s = 0 runs only the unconditional
    pass
    (the prompt is not even encoded); s != 0 runs the unconditional and the conditional halves in one batched
    UNet call. The unconditional prompt is "" padded like every prompt, so both halves share one text length.
    Noise: `noise`, else a `generator`, else in eval mode one noise map drawn from `noise_seed` and shared by
    every image (deterministic, batch-independent inference), else (training) the global RNG.
    Several sites are concatenated on channels, each resized to the token grid of the first site (area
    averaging down, bilinear up). Tokens are in row-major grid order.
    """

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        sites: Sequence[str] = (DEFAULT_SITE,),
        timestep: int = DEFAULT_TIMESTEP,
        guidance_scale: float = 0.0,
        cache_latents: bool = False,
        noise_seed: int | None = 0,
    ) -> None:
        super().__init__()
        if backbone.text_encoder is None:
            raise ValueError(
                "SDFeatureExtractor needs the backbone's text encoder: load it with load_text_encoder=True"
            )
        if not sites:
            raise ValueError("SDFeatureExtractor needs at least one feature site")
        steps = backbone.scheduler.config.num_train_timesteps
        if not 0 <= timestep < steps:
            raise ValueError(f"timestep {timestep} outside the scheduler's [0, {steps})")
        self.backbone = backbone.requires_grad_(False)
        if backbone.unet.class_embedding is not None:
            # A UNet saved with the Lotus/SDPose task-switcher projection: text-conditioned SD2 use has none.
            logger.warning("the UNet's class embedding is dropped: Mustafar runs it as SD2 does, without one")
            backbone.unet.class_embedding = None
            backbone.unet.register_to_config(
                class_embed_type=None, projection_class_embeddings_input_dim=None
            )
        self.sites = list(sites)
        self.channels = [site_channels(backbone.unet, site) for site in self.sites]
        self.timestep = int(timestep)
        self.guidance_scale = float(guidance_scale)
        self.noise_seed = (
            noise_seed  # eval mode without noise/generator: noise from this seed (None: global RNG)
        )
        self._uncond: torch.Tensor | None = None
        self._token_counts: dict[tuple[int, int], int] = {}
        # The VAE is frozen and the posterior mode deterministic: a latent depends only on the pixels, so
        # training on a fixed set may key them by content (the VAE is most of a tiny step's cost).
        self.cache_latents = cache_latents
        self._latents: dict[bytes, torch.Tensor] = {}

    def train(self, mode: bool = True) -> SDFeatureExtractor:
        """Training mode draws fresh noise per call (global RNG); the frozen backbone itself stays in eval."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def feature_dim(self) -> int:
        """Channels C of the concatenated tokens."""
        return sum(self.channels)

    def unconditional_embeds(self) -> torch.Tensor:
        """The embedding of "" padded to the tokenizer length: [1, L, D] (computed once; frozen encoder)."""
        if self._uncond is None or self._uncond.device != self.backbone.device:
            self._uncond = self.backbone.encode_prompts([""])
        return self._uncond

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """Tokens N per image of `image_size` (H, W): one probe UNet call on a zero latent (cached)."""
        latent = tuple(math.ceil(size / 8) for size in image_size)
        if latent not in self._token_counts:
            sample = torch.zeros(
                1, self.backbone.unet.config.in_channels, *latent, device=self.backbone.device
            )
            names = {"site0": self.sites[0]}
            with torch.no_grad(), tapped(self.backbone.unet, names) as taps:
                self.backbone.unet_forward(
                    sample, self.timestep, task=None, encoder_hidden_states=self.unconditional_embeds()
                )
                feature = taps.pop()["site0"]
            self._token_counts[latent] = self._tokens(feature, latent, self.sites[0])[0].shape[1]
        return self._token_counts[latent]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior-mode latents [B, 4, h, w] of images in [0, 1] (content-cached when enabled)."""
        if not self.cache_latents:
            return self.backbone.encode_images(images)
        keys = [hashlib.sha1(image.detach().float().cpu().numpy().tobytes()).digest() for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._latents]
        if missing:
            fresh = self.backbone.encode_images(images[missing])
            self._latents.update({keys[i]: latent for i, latent in zip(missing, fresh, strict=True)})
        return torch.stack([self._latents[key] for key in keys]).to(self.backbone.device)

    def _tokens(
        self, feature: torch.Tensor, latent: tuple[int, int], site: str
    ) -> tuple[torch.Tensor, tuple]:
        """Site output -> tokens [B, N, C] and their grid."""
        if feature.ndim == 4:  # a block output [B, C, h, w]
            grid = tuple(feature.shape[-2:])
            return feature.flatten(2).transpose(1, 2), grid  # [B, h*w, C]
        if feature.ndim == 3:  # a transformer projection, already [B, h*w, C]
            return feature, _grid(feature.shape[1], latent, site)
        raise ValueError(f"feature site {site!r}: expected a 3-d or 4-d output, got {tuple(feature.shape)}")

    def forward(
        self,
        images: torch.Tensor,
        prompts: Sequence[str] | None = None,
        guidance_scale: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Tokens [B, N, C] of images [B, 3, H, W] in [0, 1]; s != 0 needs one prompt per image."""
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        batch = images.shape[0]
        if scale != 0 and (prompts is None or len(prompts) != batch):
            got = "none" if prompts is None else len(prompts)
            raise ValueError(
                f"guidance scale {scale} needs one prompt per image: {batch} images, {got} prompts"
            )
        backbone = self.backbone
        latents = self.encode(images)  # [B, 4, h, w], posterior mode
        if noise is None and generator is None and not self.training and self.noise_seed is not None:
            # Inference is deterministic and batch-independent: one noise map from the seed for every image,
            # so an image gives the same features in every call, batch and process.
            seeded = torch.Generator().manual_seed(self.noise_seed)
            noise = torch.randn((1, *latents.shape[1:]), generator=seeded).expand(latents.shape)
        if noise is None:
            noise = torch.randn(
                latents.shape, generator=generator, device=generator.device if generator else None
            )
        if noise.shape != latents.shape:
            raise ValueError(
                f"noise must have the latent shape {tuple(latents.shape)}; got {tuple(noise.shape)}"
            )
        noisy = backbone.add_noise(latents, noise.to(latents), self.timestep)  # [B, 4, h, w]
        context = self.unconditional_embeds().expand(batch, -1, -1)  # [B, L, D]
        if scale != 0:
            noisy = torch.cat([noisy, noisy])  # [2B, 4, h, w]: unconditional half first
            context = torch.cat([context, backbone.encode_prompts(prompts)])  # [2B, L, D]
        names = {f"site{i}": site for i, site in enumerate(self.sites)}
        with torch.no_grad(), tapped(backbone.unet, names) as taps:
            backbone.unet_forward(noisy, self.timestep, task=None, encoder_hidden_states=context)
            captured = taps.pop()
        latent_size = tuple(latents.shape[-2:])
        tokens, grids = [], []
        for name, site in names.items():
            feature, grid = self._tokens(captured[name].float(), latent_size, site)  # [B or 2B, N_i, C_i]
            if scale != 0:
                uncond, cond = feature[:batch], feature[batch:]
                feature = uncond + scale * (cond - uncond)
            tokens.append(feature)
            grids.append(grid)
        return _concatenate(tokens, grids)


def _concatenate(tokens: list[torch.Tensor], grids: list[tuple[int, int]]) -> torch.Tensor:
    """Concatenate per-site tokens on channels on the first site's grid: [B, N_0, sum C_i]."""
    target = grids[0]
    resized = [tokens[0]]
    for feature, grid in zip(tokens[1:], grids[1:], strict=True):
        if grid != target:
            maps = feature.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], *grid)  # [B, C, h, w]
            if grid[0] >= target[0] and grid[1] >= target[1]:
                maps = F.adaptive_avg_pool2d(maps, target)
            else:
                maps = F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
            feature = maps.flatten(2).transpose(1, 2)  # [B, N_0, C]
        resized.append(feature)
    return torch.cat(resized, dim=-1)


def save_features(path: str | os.PathLike, tokens: torch.Tensor, **metadata: object) -> Path:
    """Write tokens [B, N, C] as safetensors, with JSON-encoded metadata (sites, timestep, scale, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"tokens": tokens.detach().cpu().contiguous()},
        str(path),
        metadata={key: json.dumps(value) for key, value in metadata.items()},
    )
    return path


def load_features(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, object]]:
    """Read tokens [B, N, C] and the metadata written by save_features."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    return load_file(str(path))["tokens"], metadata
