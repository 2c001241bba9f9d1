"""The fast autoencoder path: diffusers' AutoencoderTiny (TAESD format) in place of the SD VAE.

TAESD works directly in SD's *scaled* latent space (latents * scaling_factor) and is deterministic. The
backbone divides by the VAE's scaling factor before decoding and multiplies by it after encoding;
`TinyAutoencoderRoute` keeps the VAE's interface and undoes both scalings, so
`StableDiffusionBackbone.encode/decode` route through it unchanged. Folders are loaded by
`StableDiffusionBackbone.load_tiny_autoencoder` (its MissingWeightsError); this module needs nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.models.autoencoders.vae import DecoderOutput
from torch import nn

VaeMode = Literal["full", "tiny-decode", "tiny"]
VAE_MODES: tuple[str, ...] = ("full", "tiny-decode", "tiny")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def taesd_from_config(**overrides: Any) -> AutoencoderTiny:
    """TAESD's architecture (madebyollin/taesd config, shipped in configs/taesd) with random weights."""
    config = AutoencoderTiny.load_config(str(CONFIG_DIR / "taesd"))
    return AutoencoderTiny.from_config({**config, **overrides})


@dataclass
class PointPosterior:
    """A TAESD encoding in the VAE posterior's interface: zero spread, so sampling returns the mean."""

    mean: torch.Tensor  # [B, 4, h, w], unscaled (VAE space)

    @property
    def std(self) -> torch.Tensor:
        """Zeros: TAESD is deterministic."""
        return torch.zeros_like(self.mean)

    def mode(self) -> torch.Tensor:
        """The latent itself."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent itself (no spread to sample from)."""
        return self.mean


@dataclass
class PointEncoderOutput:
    """`vae.encode(...)`'s output shape: `.latent_dist`."""

    latent_dist: PointPosterior


class TinyAutoencoderRoute(nn.Module):
    """The SD VAE's interface with AutoencoderTiny taking over decoding ("tiny-decode") or both ("tiny").

    Everything else (config, dtype, save_pretrained, attention processors) is the full VAE's, so exports and
    switches see the real VAE.
    """

    def __init__(self, full: AutoencoderKL, tiny: AutoencoderTiny, mode: VaeMode):
        super().__init__()
        if mode not in ("tiny-decode", "tiny"):
            raise ValueError(f"a tiny route needs mode 'tiny-decode' or 'tiny'; got {mode!r}")
        if tiny.config.latent_channels != full.config.latent_channels:
            raise ValueError(
                f"AutoencoderTiny has {tiny.config.latent_channels} latent channels, the VAE "
                f"{full.config.latent_channels}: it was made for another latent space"
            )
        self.full = full
        tiny = tiny.to(next(full.parameters()).device)
        if tiny.dtype != full.dtype:  # diffusers warns on every dtype cast, even a no-op one
            tiny = tiny.to(full.dtype)
        self.tiny = tiny.requires_grad_(False).eval()
        self.mode = mode

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers and the two submodules
        except AttributeError:
            return getattr(super().__getattr__("full"), name)

    @property
    def scaling_factor(self) -> float:
        """The full VAE's latent scaling factor (TAESD latents are already multiplied by it)."""
        return float(self.full.config.scaling_factor)

    def encode(self, pixels: torch.Tensor, return_dict: bool = True) -> Any:
        """Images in [-1, 1] [B, 3, H, W] -> `.latent_dist` with unscaled latents [B, 4, H/8, W/8]."""
        if self.mode != "tiny":
            return self.full.encode(pixels, return_dict=return_dict)
        latents = self.tiny.encode(pixels).latents  # [B, 4, H/8, W/8], scaled
        return PointEncoderOutput(PointPosterior(latents / self.scaling_factor))

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        """Unscaled latents [B, 4, h, w] -> `.sample` images in [-1, 1] [B, 3, 8h, 8w]."""
        return DecoderOutput(sample=self.tiny.decode(latents * self.scaling_factor).sample)


def route_vae(vae: nn.Module, tiny: AutoencoderTiny | None, mode: VaeMode) -> nn.Module:
    """The module to use as the backbone's VAE for `mode`: the full VAE or a route through `tiny`."""
    if mode not in VAE_MODES:
        raise ValueError(f"vae must be one of {VAE_MODES}; got {mode!r}")
    full = vae.full if isinstance(vae, TinyAutoencoderRoute) else vae
    if mode == "full":
        return full
    if tiny is None:
        raise ValueError(
            f"vae={mode!r} needs tiny_autoencoder: a TAESD-format folder (e.g. checkpoints/taesd "
            "from madebyollin/taesd, or checkpoints/tiny/taesd for the tiny backbone)"
        )
    return TinyAutoencoderRoute(full, tiny, mode)


__all__ = [
    "VAE_MODES",
    "PointPosterior",
    "TinyAutoencoderRoute",
    "route_vae",
    "taesd_from_config",
]
