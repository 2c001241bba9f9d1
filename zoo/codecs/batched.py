"""Batched torch heatmap decoding (argmax + DARK-UDP refinement) and heatmap flipping for inference."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Clamp range of the blurred heatmap before the log: keeps the log finite and matches mmpose's DARK-UDP.
_LOG_MIN, _LOG_MAX = 1e-3, 50.0


@cache
def _blur_kernel_1d(kernel_size: int) -> np.ndarray:
    # OpenCV's kernel for sigma=0 (derived from the size; a fixed table for sizes <= 7): what mmpose's blur
    # uses.
    return cv2.getGaussianKernel(kernel_size, 0).astype(np.float32).ravel()  # [k]


def _blur_maps(heatmaps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    # Separable Gaussian blur of [M, H, W] maps with zero padding (mmpose blurs a zero-bordered copy).
    kernel = torch.from_numpy(_blur_kernel_1d(kernel_size)).to(heatmaps)
    pad = kernel_size // 2
    flat = heatmaps.unsqueeze(1)  # [M, 1, H, W]
    blurred = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, pad))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(pad, 0))[:, 0]  # [M, H, W]


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (x, y) of each heatmap's maximum, -1 where the maximum is <= 0, and the maximum values."""
    n, k, h, w = heatmaps.shape
    values, index = heatmaps.reshape(n, k, h * w).max(dim=-1)  # [N, K], first maximum on ties like numpy
    coords = torch.stack((index % w, torch.div(index, w, rounding_mode="floor")), dim=-1).to(heatmaps.dtype)
    coords = torch.where((values > 0).unsqueeze(-1), coords, torch.full_like(coords, -1.0))  # [N, K, 2]
    return coords, values


def _blurred_neighbourhood(coords: torch.Tensor, heatmaps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    # Blurred values at the 3x3 pixels around each integer maximum, computed from a local patch instead of
    # blurring whole maps: the patch is (3 + kernel - 1)^2 pixels, zero outside the map
    # (the blur's zero padding).
    n, k, h, w = heatmaps.shape
    half = kernel_size // 2
    offsets = torch.arange(-1 - half, 2 + half, device=heatmaps.device)  # [S], S = kernel_size + 2
    rows = coords[..., 1].long().unsqueeze(-1) + offsets  # [N, K, S]
    cols = coords[..., 0].long().unsqueeze(-1) + offsets  # [N, K, S]
    row_inside = (rows >= 0) & (rows < h)
    col_inside = (cols >= 0) & (cols < w)
    inside = row_inside.unsqueeze(-1) & col_inside.unsqueeze(-2)  # [N, K, S, S]
    index = rows.clamp(0, h - 1).unsqueeze(-1) * w + cols.clamp(0, w - 1).unsqueeze(-2)  # [N, K, S, S]
    size = offsets.numel()
    patch = heatmaps.reshape(n, k, h * w).gather(-1, index.reshape(n, k, size * size))
    patch = patch.reshape(n, k, size, size) * inside  # [N, K, S, S]
    # Row i of `band` is the 1-D kernel placed at output position i: band @ patch @ band^T is the 2-D blur.
    kernel = torch.from_numpy(_blur_kernel_1d(kernel_size)).to(heatmaps)
    band = torch.zeros(3, size, dtype=heatmaps.dtype, device=heatmaps.device)
    for i in range(3):
        band[i, i : i + kernel_size] = kernel
    return band @ patch @ band.T  # [N, K, 3, 3], entry [j, i] at pixel (x - 1 + i, y - 1 + j)


def refine_dark_udp_batched(
    coords: torch.Tensor, heatmaps: torch.Tensor, blur_kernel_size: int = 11
) -> torch.Tensor:
    """Sub-pixel refinement of integer maxima by one Newton step on the blurred log-heatmap (DARK for UDP)."""
    if blur_kernel_size % 2 != 1:
        raise ValueError(f"blur kernel size must be odd, got {blur_kernel_size}")
    n, k, h, w = heatmaps.shape
    local = _blurred_neighbourhood(coords, heatmaps, blur_kernel_size)  # [N, K, 3, 3]
    # mmpose pads the log-map by repeating its edge: a neighbour outside the map reads the nearest pixel
    # inside.
    x = coords[..., 0].long()  # [N, K]
    y = coords[..., 1].long()
    steps = torch.tensor([-1, 0, 1], device=heatmaps.device)
    col = ((x.unsqueeze(-1) + steps).clamp(0, w - 1) - (x.unsqueeze(-1) - 1)).clamp(0, 2)  # [N, K, 3]
    row = ((y.unsqueeze(-1) + steps).clamp(0, h - 1) - (y.unsqueeze(-1) - 1)).clamp(0, 2)  # [N, K, 3]
    local = local.gather(-2, row.unsqueeze(-1).expand(n, k, 3, 3))
    local = local.gather(-1, col.unsqueeze(-2).expand(n, k, 3, 3))  # [N, K, 3, 3] edge-clamped

    # mmpose rescales each blurred map to its original maximum M (factor r = M / max(blurred)), clamps to
    # [1e-3, 50] and takes the log. r cancels in the derivatives unless the clamp bites, and r lies in
    # [1, M / max(local)] up to rounding since a normalised blur never exceeds M. Only maps where some
    # neighbour could be clamped for r in that range need the exact max of their whole blurred map.
    peak = heatmaps.reshape(n, k, h * w).amax(-1)  # [N, K]
    r_high = peak / local.amax(dim=(-2, -1)).clamp_min(torch.finfo(heatmaps.dtype).tiny)
    lowest = local.amin(dim=(-2, -1))
    highest = local.amax(dim=(-2, -1))
    # A small margin below r=1 absorbs float rounding of the blur.
    needs_exact = (coords[..., 0] >= 0) & ((lowest * (1 - 1e-4) < _LOG_MIN) | (highest * r_high > _LOG_MAX))
    ratio = r_high
    if needs_exact.any():
        blurred_max = _blur_maps(heatmaps[needs_exact], blur_kernel_size).amax(dim=(-2, -1))  # [M]
        ratio = ratio.masked_scatter(needs_exact, peak[needs_exact] / blurred_max)
    logs = (local * ratio[..., None, None]).clamp(_LOG_MIN, _LOG_MAX).log()  # [N, K, 3, 3]

    center = logs[..., 1, 1]
    right, left, down, up = logs[..., 1, 2], logs[..., 1, 0], logs[..., 2, 1], logs[..., 0, 1]
    down_right, up_left = logs[..., 2, 2], logs[..., 0, 0]
    dx = 0.5 * (right - left)
    dy = 0.5 * (down - up)
    dxx = right - 2 * center + left
    dyy = down - 2 * center + up
    # Mixed derivative from the two diagonal neighbours only, as in the DARK-UDP reference formula.
    dxy = 0.5 * (down_right - right - down + 2 * center - left - up + up_left)
    # Hessian + eps*I keeps the inverse finite on flat maps; closed-form 2x2 inverse applied to the gradient.
    eps = torch.finfo(torch.float32).eps
    a = dxx + eps
    d = dyy + eps
    det = a * d - dxy * dxy
    step_x = (d * dx - dxy * dy) / det
    step_y = (a * dy - dxy * dx) / det
    refined = coords - torch.stack((step_x, step_y), dim=-1)  # [N, K, 2]
    # A channel without a positive maximum has no peak to refine: keep its -1 marker.
    return torch.where(coords >= 0, refined, coords)


def decode_udp_batched(
    heatmaps: torch.Tensor,
    input_size: Sequence[int] | None = None,
    blur_kernel_size: int = 11,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode UDP heatmaps [N, K, H, W] to keypoints [N, K, 2] and scores [N, K]
    (mmpose `UDPHeatmap.decode`, batched).

    With `input_size` (w, h) the keypoints are in input-image pixels, scaled as mmpose does
    (`heatmap_xy / (W - 1, H - 1) * input_size`); without it they are in heatmap pixels.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be [N, K, H, W], got shape {tuple(heatmaps.shape)}")
    n, k, h, w = heatmaps.shape
    if h < 2 or w < 2:
        raise ValueError(f"heatmaps must be at least 2x2, got {h}x{w}")
    heatmaps = heatmaps.detach().float()
    coords, scores = heatmap_argmax(heatmaps)  # [N, K, 2], [N, K]
    keypoints = refine_dark_udp_batched(coords, heatmaps, blur_kernel_size)
    if input_size is not None:
        scale = torch.tensor(
            [input_size[0] / (w - 1), input_size[1] / (h - 1)], dtype=keypoints.dtype, device=keypoints.device
        )
        keypoints = keypoints * scale
    return keypoints, scores


def flip_heatmaps(heatmaps: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """Mirror heatmaps [N, K, H, W] horizontally and swap left/right channels (flip test; no shift under UDP).
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be [N, K, H, W], got shape {tuple(heatmaps.shape)}")
    if len(flip_indices) != heatmaps.shape[1]:
        raise ValueError(f"{len(flip_indices)} flip indices for {heatmaps.shape[1]} heatmap channels")
    # UDP aligns pixel centres so that x -> (W-1) - x is exact: a pure mirror, no one-pixel shift.
    index = torch.as_tensor(list(flip_indices), dtype=torch.long, device=heatmaps.device)
    return heatmaps.flip(-1).index_select(1, index)


__all__ = [
    "decode_udp_batched",
    "flip_heatmaps",
    "heatmap_argmax",
    "refine_dark_udp_batched",
]
