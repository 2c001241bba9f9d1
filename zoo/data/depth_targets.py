"""Depth/disparity target normalisations of Lotus/Marigold: metric depth to [-1, 1] maps the VAE can encode.
"""

from __future__ import annotations

from typing import Literal

import torch

NormType = Literal["trunc_disparity", "disparity", "truncnorm", "instnorm", "perscene_norm"]
NORM_TYPES: tuple[str, ...] = ("trunc_disparity", "disparity", "truncnorm", "instnorm", "perscene_norm")

# Official constants: 2 %/98 % quantiles, 1e-5 in the denominator, per-scene divisor 65 m.
LOW_QUANTILE, HIGH_QUANTILE = 0.02, 0.98
RANGE_EPS = 1e-5
PERSCENE_DIVISOR = 65.0


def is_disparity_norm(norm_type: str) -> bool:
    """True when the normalisation works on inverse depth
    (the model then predicts affine-invariant disparity)."""
    return norm_type in ("trunc_disparity", "disparity")


def _range(values: torch.Tensor, truncated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if values.numel() == 0:
        raise ValueError("depth map has no valid pixels to normalise")
    if truncated:
        quantiles = torch.quantile(
            values.float(), torch.tensor([LOW_QUANTILE, HIGH_QUANTILE], device=values.device)
        )
        return quantiles[0], quantiles[1]
    return values.min(), values.max()


def normalize_depth(
    depth: torch.Tensor, valid: torch.Tensor, norm_type: NormType = "trunc_disparity"
) -> torch.Tensor:
    """Map one metric depth map [1, H, W] (valid where `valid`) to [-1, 1] as the official training does.

    Quantiles/min-max are computed on valid pixels with depth > 0 and applied to every pixel with depth > 0,
    then clipped to [-1, 1]: pixels outside `valid` that still carry a depth (Virtual KITTI sky at 655 m) land
    on the far end, as in the official loaders. Pixels without depth get -1 (they are masked out of the loss).
    """
    if norm_type not in NORM_TYPES:
        raise ValueError(f"unknown norm_type {norm_type!r}; expected one of {NORM_TYPES}")
    has_depth = depth > 0
    usable = valid & has_depth
    if norm_type == "perscene_norm":
        normalised = (depth / PERSCENE_DIVISOR - 0.5) * 2.0
    else:
        values = 1.0 / depth.clamp_min(1e-8) if is_disparity_norm(norm_type) else depth
        low, high = _range(values[usable], truncated=norm_type in ("trunc_disparity", "truncnorm"))
        normalised = ((values - low) / (high - low + RANGE_EPS) - 0.5) * 2.0
    return torch.where(has_depth, normalised.clamp(-1.0, 1.0), torch.full_like(depth, -1.0))


def target_to_rgb(target: torch.Tensor) -> torch.Tensor:
    """Repeat a one-channel target [..., 1, H, W] to the three channels the VAE expects."""
    return target.expand(*target.shape[:-3], 3, *target.shape[-2:])
